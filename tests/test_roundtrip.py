"""Writer and reader in different processes: every dtype, every kind of shape, changes."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import numpy as np
import pytest
from arrays import digest, make_array
from conftest import Daemon

import ndsharray
from ndsharray import ring

DTYPES: list[Any] = [
    "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16", "?",
    "g", "G", ">i4", ">f8", "M8[ns]", "M8[D]", "m8[us]", "S7", "U5", "V6",
    [("x", "<f4"), ("y", "<i2"), ("name", "S5")],
    [("pos", "<f8", (3,)), ("id", "<u4")],
]
SHAPES: list[tuple[int, ...]] = [(), (0,), (3, 0, 2), (7,), (4, 2), (2,) * 12, (2400, 1800)]


def descr(dt: Any) -> Any:
    return repr(np.lib.format.dtype_to_descr(np.dtype(dt)))


def test_every_dtype_crosses_processes(daemon: Any, puppets: Any) -> None:
    reader = puppets()
    with ndsharray.NdShArray("dtypes", r_w="w") as w:
        reader(op="open", name="r", tag="dtypes", rw="r")
        for seed, dt in enumerate(DTYPES):
            a = make_array(dt, (3, 4), seed)
            w.write(a)
            got = reader(op="read", name="r")
            assert got["status"] is True, dt
            assert got["dtype"] == descr(dt) and got["shape"] == [3, 4], dt
            assert got["digest"] == digest(a), dt
            assert got["writeable"] is False


def test_every_shape_crosses_processes(daemon: Any, puppets: Any) -> None:
    reader = puppets()
    with ndsharray.NdShArray("shapes", r_w="w") as w:
        reader(op="open", name="r", tag="shapes", rw="r")
        for seed, shape in enumerate(SHAPES):
            a = make_array("f4", shape, seed)
            w.write(a)
            got = reader(op="read", name="r")
            assert got["status"] is True and got["shape"] == list(shape), shape
            assert got["digest"] == digest(a), shape


def test_constructor_array_is_written_unless_empty(daemon: Any) -> None:
    with ndsharray.NdShArray("ctor", np.arange(5), "w") as w, \
            ndsharray.NdShArray("ctor", r_w="r") as r:
        assert w.is_valid and w.shape == (5,)
        status, a = r.read()
        assert status and a.tolist() == [0, 1, 2, 3, 4]
    with ndsharray.NdShArray("ctor2", np.empty((0, 3)), "W") as w:
        assert not w.is_valid and w.ndarray_mmap_name is None


def test_write_count_counts_within_a_generation_for_writer_and_reader(daemon: Any) -> None:
    with ndsharray.NdShArray("counts", r_w="w") as w, ndsharray.NdShArray("counts", r_w="r") as r:
        assert w.write_count == 0 and w.generation is None
        for k in range(3):
            w.write(np.full(4, k))  # the general path once, then the one-call path
        assert w.write_count == 3 and r.read()[0] and r.write_count == 3
        first = w.generation
        assert first is not None and r.generation == first
        w.write(np.zeros(5))  # a new shape starts again, in the next generation
        assert w.write_count == 1 and r.read()[0] and r.write_count == 1
        assert w.generation == r.generation == first + 1
        w.write(np.zeros(5))
    assert w.write_count == 2  # kept after close


def test_non_contiguous_and_fortran_inputs(daemon: Any) -> None:
    base = make_array("u2", (40, 30), 1)
    with ndsharray.NdShArray("layouts", r_w="w") as w, ndsharray.NdShArray("layouts", r_w="r") as r:
        for a in (base[::3, 1::2], np.asfortranarray(base), base.T, base[::-1]):
            w.write(a)
            status, got = r.read()
            assert status and got.shape == a.shape and np.array_equal(got, a)
            assert got.flags.c_contiguous


def test_same_size_arrays_of_another_dtype_make_a_new_generation(daemon: Any) -> None:
    # The writer's one-call path takes only arrays of the segment's exact dtype and shape;
    # anything else of the same byte size must still become a generation of its own.
    with ndsharray.NdShArray("kinds", r_w="w") as w, ndsharray.NdShArray("kinds", r_w="r") as r:
        for a in (make_array("f8", (3, 4), 1), make_array("i8", (3, 4), 2), make_array(">f8", (3, 4), 3),
                  make_array("f8", (4, 3), 4), make_array("M8[ms]", (3, 4), 5), make_array("c8", (3, 4), 6),
                  make_array("f8", (3, 4), 7)):
            w.write(a)
            status, got = r.read()
            assert status and got.dtype == a.dtype and got.shape == a.shape
            assert got.tobytes() == a.tobytes()
        w.write(make_array("f8", (3, 4), 8))  # a same-dtype write after all that
        assert r.read()[1].tobytes() == make_array("f8", (3, 4), 8).tobytes()


def test_shape_and_dtype_change_reader_follows(daemon: Any, puppets: Any) -> None:
    reader = puppets()
    # The seed walkthrough: float64 (4, 2), then uint8 (6, 3), reader does nothing special.
    first = np.random.random((4, 2))
    with ndsharray.NdShArray("my_unique_tag123", array=first, r_w="w") as w:
        seg1 = w.ndarray_mmap_name
        reader(op="open", name="r", tag="my_unique_tag123", rw="r")
        got = reader(op="read", name="r", hold=True)  # keeps this view alive
        assert got["status"] and got["digest"] == digest(first)
        second = (255 * np.random.random((6, 3))).astype(np.uint8)
        w.write(second)
        assert w.ndarray_mmap_name != seg1
        got = reader(op="read", name="r")
        assert got["status"] is True
        assert got["dtype"] == "'|u1'" and got["shape"] == [6, 3]
        assert got["digest"] == digest(second) and got["segment"] == w.ndarray_mmap_name
        assert reader(op="read", name="r")["status"] is False


def test_reader_before_writer(daemon: Any, puppets: Any) -> None:
    with ndsharray.NdShArray("later", r_w="r") as r:
        status, a = r.read()
        assert status is False and a.size == 0 and not r.is_valid
        writer = puppets()
        writer.start_writer("later", "i4", [5], 3)
        status, a = r.read()
        assert status is True and r.is_valid
        assert digest(a) == digest(make_array("i4", (5,), 3))
        assert r.read_time_ms >= 0


def test_read_returns_false_and_last_array_without_new_write(daemon: Any) -> None:
    with ndsharray.NdShArray("same", np.arange(3.0), "w") as w, ndsharray.NdShArray("same", r_w="r") as r:
        s1, a1 = r.read()
        s2, a2 = r.read()
        assert (s1, s2) == (True, False) and a2 is a1
        w.write(np.arange(3.0) + 1)
        s3, a3 = r.read()
        assert s3 and a3.tolist() == [1.0, 2.0, 3.0] and a1.tolist() == [0.0, 1.0, 2.0]


def test_copy_read_is_owned_and_writeable(daemon: Any) -> None:
    with ndsharray.NdShArray("cp", np.arange(4), "w") as w, ndsharray.NdShArray("cp", r_w="r") as r:
        status, a = r.read(copy=True)
        assert status and a.flags.writeable and a.flags.owndata
        a[0] = 99
        w.write(np.arange(4))
        assert r.read()[1].tolist() == [0, 1, 2, 3]


def test_a_view_cannot_be_made_writeable(daemon: Any) -> None:
    # The first read (general path) and later ones (one C call) build views alike: read-only,
    # C-contiguous and aligned, and numpy refuses to make them writeable.
    with ndsharray.NdShArray("ro", np.zeros((3, 4), ">f8"), "w") as w, ndsharray.NdShArray("ro", r_w="r") as r:
        for k in range(3):
            w.write(np.full((3, 4), k, ">f8"))
            status, a = r.read()
            assert status and a.dtype == np.dtype(">f8") and a[2, 3] == k
            assert not a.flags.writeable and a.flags.c_contiguous and a.flags.aligned
            with pytest.raises(ValueError, match="WRITEABLE"):
                a.flags.writeable = True
            with pytest.raises(ValueError, match="read-only"):
                a[0, 0] = 1


def test_view_never_changes_while_held(daemon: Any, puppets: Any) -> None:
    writer = puppets()
    writer.start_writer("held", "u1", [1000], 0)
    with ndsharray.NdShArray("held", r_w="r") as r:
        status, held = r.read()
        assert status
        expected = digest(held)
        for seed in range(1, 40):
            writer(op="write", name="w", dtype="u1", shape=[1000], seed=seed)
            assert r.read()[0]
        assert digest(held) == expected
        status, latest = r.read()
        assert digest(latest) == digest(make_array("u1", (1000,), 39))


def test_writer_grows_ring_when_readers_keep_views(daemon: Any) -> None:
    with ndsharray.NdShArray("keep", np.zeros(10), "w", slots=2, max_slots=8) as w, \
            ndsharray.NdShArray("keep", r_w="r") as r:
        kept = []
        for k in range(10):
            w.write(np.full(10, float(k)))
            status, a = r.read()
            assert status
            kept.append(a)
        # Each generation fills up with views the reader keeps; then the ring doubles.
        assert [a[0] for a in kept] == list(range(10))
        info = ndsharray.list_tags()[0]
        assert (info.slots, info.generation) == (8, 3)


def test_writer_stalls_with_clear_error_at_max_slots(daemon: Any) -> None:
    with ndsharray.NdShArray("stall", np.zeros(4), "w", slots=2, max_slots=2,
                             write_timeout=0.05) as w, ndsharray.NdShArray("stall", r_w="r") as r:
        held = [r.read()[1]]
        w.write(np.ones(4))
        held.append(r.read()[1])
        with pytest.raises(ndsharray.WriterStalledError, match="pinned by readers"):
            w.write(np.ones(4))
        held.clear()  # readers drop their views: the writer is free again
        r.read()
        w.write(np.full(4, 2.0))
        assert r.read()[1].tolist() == [2.0] * 4


def test_default_slots_keep_very_large_arrays_near_twice_their_size(daemon: Any) -> None:
    # 1.1.4 took 1x (and tore frames); 3 slots made a 2 GB array cost 6 GB of /dev/shm.
    big = ring.BIG_ARRAY_BYTES // 8 + 1  # float64 items: just over the threshold
    cases: list[tuple[str, np.ndarray[Any, Any], dict[str, Any], int]] = [
        ("small", np.zeros(10), {}, 3), ("edge", np.zeros(ring.BIG_ARRAY_BYTES // 8), {}, 3),
        ("big", np.zeros(big), {}, 2), ("big3", np.zeros(big), {"slots": 3}, 3),
        ("small2", np.zeros(10), {"slots": 2}, 2), ("capped", np.zeros(10), {"max_slots": 2}, 2)]
    for tag, a, kw, slots in cases:
        with ndsharray.NdShArray(tag, a, "w", **kw) as w:
            info = ndsharray.tag_info(tag)
            assert (tag, info.slots) == (tag, slots)
            assert info.size < (slots + 0.01) * a.nbytes + 64 * 1024  # what the README's table says
            w.write(a)
    with pytest.raises(ValueError, match="slots"):
        ndsharray.NdShArray("bad", r_w="w", slots=3, max_slots=2)


def test_a_very_large_arrays_ring_grows_one_slot_at_a_time(daemon: Any) -> None:
    n = ring.BIG_ARRAY_BYTES // 8 + 1
    with ndsharray.NdShArray("bigring", np.zeros(n), "w") as w, ndsharray.NdShArray("bigring", r_w="r") as r:
        held = r.read()[1]  # the reader keeps the latest frame: the writer has one slot left
        w.write(np.ones(n))
        w.write(np.full(n, 2.0))  # the held slot is the only one not latest: grow
        info = ndsharray.tag_info("bigring")
        assert (info.slots, info.generation) == (3, 2)  # 2 -> 3, not 4
        assert held[0] == 0.0 and r.read()[1][-1] == 2.0


def test_a_big_array_starts_with_3_slots_where_growing_from_2_would_not_fit() -> None:
    big = ring.BIG_ARRAY_BYTES + 1
    assert ring.initial_slots(big, 32) == 2  # free space unknown: as if plenty
    assert ring.initial_slots(big, 32, 10 * big) == 2
    assert ring.initial_slots(big, 32, 4 * big) == 3  # 3 fit, the 2 + 3 of a growth do not
    assert ring.initial_slots(big, 32, 2 * big) == 2  # not even 3 fit: the smallest ring
    assert ring.initial_slots(big, 2, 4 * big) == 2  # max_slots still caps it
    assert ring.initial_slots(1000, 32, 0) == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a small tmpfs as the shared-memory folder")
def test_a_held_frame_never_stalls_a_big_arrays_writer_where_shm_fits_3_slots(
        folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A /dev/shm with room for 4 frames: 3 slots fit, growing 2 -> 3 (5 at once) does not.
    # Started with 2 slots, a reader holding its frame left the writer nowhere to write.
    n = (ring.BIG_ARRAY_BYTES + 8 * 4096) // 8
    shm = os.path.join(folder, "shm")
    os.mkdir(shm)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={4 * 8 * n + (1 << 20)}", "tmpfs", shm],
                      capture_output=True).returncode:
        pytest.skip("could not mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        monkeypatch.setenv("NDSHARRAY_SHM_DIR", shm)
        d = Daemon(folder).start()
        monkeypatch.setenv(ndsharray.config.ENV_ENDPOINT, d.endpoint)
        monkeypatch.setenv(ndsharray.config.ENV_AUTOSTART, "0")
        try:
            with ndsharray.NdShArray("big", np.zeros(n), "w", write_timeout=0.5) as w, \
                    ndsharray.NdShArray("big", r_w="r") as r:
                held = r.read()[1]  # a reader keeps this frame for the whole test
                for k in range(1, 5):
                    w.write(np.full(n, float(k)))
                assert ndsharray.tag_info("big").slots == 3
                assert held[0] == 0.0 and r.read()[1][0] == 4.0
                del held
        finally:
            ndsharray.transport.close_all()
            assert d.stop() == 0, d.read_log()
    finally:
        subprocess.run(["umount", "-l", shm], check=True)


def test_non_ascii_structured_field_names_work(daemon: Daemon) -> None:
    dt = np.dtype([("température", "f4"), ("größe", "i2")])
    a = np.zeros(3, dt)
    a["température"] = [1.5, 2.5, 3.5]
    with ndsharray.NdShArray("unicode", a, "w"), ndsharray.NdShArray("unicode", r_w="r") as r:
        status, got = r.read()
        assert status and got.dtype == dt and got["température"].tolist() == [1.5, 2.5, 3.5]
