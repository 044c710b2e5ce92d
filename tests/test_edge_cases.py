"""Edge cases found in review: each test names the behaviour it protects."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytest
from arrays import digest, make_array
from conftest import Daemon, our_segments

import ndsharray
from ndsharray import admin, config, segment
from ndsharray import keeper as _keeper


def test_reader_follows_a_new_writer_after_a_clean_daemon_stop(daemon: Daemon, puppets: Any) -> None:
    first = puppets()
    first.start_writer("cam", "u1", [4], 1)
    with ndsharray.NdShArray("cam", r_w="r") as r:
        assert r.read()[0]
        assert daemon.stop() == 0
        first.stop()  # the old writer goes away while no daemon runs
        again = Daemon(daemon.folder).start()
        daemon.proc = again.proc
        second = puppets()  # a new writer process, on the new daemon
        second.start_writer("cam", "u1", [4], 2)
        status, a = r.read(timeout=20)
        assert status and digest(a) == digest(make_array("u1", (4,), 2))


def test_a_reader_registered_in_the_background_follows_a_daemon_replaced_meanwhile(
        daemon: Daemon, puppets: Any, monkeypatch: Any) -> None:
    # A reader found through the pointer posts its attach; if the daemon it found stops and
    # another starts before the keeper's first round, that attach reached the new daemon,
    # whose answer nobody read, and the keeper took the new daemon as the one the reader
    # had registered with: the reader waited on its old segment for good (1 run in ~15 of
    # the test above, before and after this session's changes).
    first = puppets()
    first.start_writer("cam", "u1", [4], 1)
    with monkeypatch.context() as m:
        m.setattr(_keeper.keeper, "_round", lambda: None)  # its first round comes late
        r = ndsharray.NdShArray("cam", r_w="r")
        assert r.read()[0]
        assert daemon.stop() == 0
        first.stop()
        again = Daemon(daemon.folder).start()
        daemon.proc = again.proc
        second = puppets()
        second.start_writer("cam", "u1", [4], 2)
    with r:
        status, a = r.read(timeout=20)
        assert status and digest(a) == digest(make_array("u1", (4,), 2))


def test_closing_after_a_stop_does_not_restart_the_daemon(daemon: Daemon, monkeypatch: Any) -> None:
    h = ndsharray.NdShArray("t", np.zeros(2), "w")
    assert daemon.stop() == 0
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    h.close()
    assert admin.daemon_pid(daemon.endpoint) is None


def test_a_closed_writer_is_not_adopted_after_a_daemon_crash(folder: str, monkeypatch: Any) -> None:
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    try:
        w = ndsharray.NdShArray("t", np.zeros(2), "w")
        seg = w.ndarray_mmap_name
        w.close()
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        ndsharray.daemon_stats()  # this client starts a successor, which recovers
        row = admin.tag_info("t")  # kept for --orphan-ttl, but not adopted: its writer had closed
        assert row.segment == seg and row.writer_pid is None and row.writer_left == "closed"
        assert seg in our_segments(d.prefix)
        with ndsharray.NdShArray("t", np.ones(2), "w") as again:  # the tag is free
            assert again.is_valid
    finally:
        admin.stop_daemon(d.endpoint)


def test_write_during_a_loan_never_reuses_the_loaned_slot(daemon: Daemon) -> None:
    with ndsharray.NdShArray("loan2", np.zeros(4), "w") as w, ndsharray.NdShArray("loan2", r_w="r") as r:
        with w.loan() as buf:
            w.write(np.ones(4))
            status, view = r.read()
            assert status and view.tolist() == [1.0] * 4
            buf[...] = 99  # must not land in the slot the reader is looking at
            assert view.tolist() == [1.0] * 4
        assert r.read()[1].tolist() == [99.0] * 4


def test_non_ascii_structured_field_names_work(daemon: Daemon) -> None:
    dt = np.dtype([("température", "f4"), ("größe", "i2")])
    a = np.zeros(3, dt)
    a["température"] = [1.5, 2.5, 3.5]
    with ndsharray.NdShArray("unicode", a, "w"), ndsharray.NdShArray("unicode", r_w="r") as r:
        status, got = r.read()
        assert status and got.dtype == dt and got["température"].tolist() == [1.5, 2.5, 3.5]


def test_absurd_shapes_get_a_clear_error(daemon: Daemon) -> None:
    with ndsharray.NdShArray("huge2", r_w="w") as w:
        with pytest.raises(ndsharray.ResourceLimitError, match="check the shape"):
            with w.loan(shape=(2**40, 2**20), dtype=np.float64):
                pass


def test_corrupt_publish_word_raises_instead_of_spinning(daemon: Daemon) -> None:
    with ndsharray.NdShArray("bad", np.zeros(4), "w") as w, ndsharray.NdShArray("bad", r_w="r") as r:
        assert r.read()[0]
        w.write(np.ones(4))
        path = segment.segment_path(w.ndarray_mmap_name)  # type: ignore[arg-type]
        fd = os.open(path, os.O_RDWR)
        try:
            pub = int.from_bytes(os.pread(fd, 8, segment.OFF_PUBLISH), "little")
            # A count the named slot does not hold:
            os.pwrite(fd, (((pub >> 8) + 1000) << 8 | (pub & 0xFF)).to_bytes(8, "little"), segment.OFF_PUBLISH)
            with pytest.raises(ndsharray.CorruptSegmentError, match="but that slot holds another write"):
                r.read()
            # A slot past the table (the C side must not index by it):
            os.pwrite(fd, (((pub >> 8) + 2000) << 8 | 200).to_bytes(8, "little"), segment.OFF_PUBLISH)
            with pytest.raises(ndsharray.CorruptSegmentError, match="names slot 200 of 3"):
                r.read()
        finally:
            os.close(fd)


def test_writer_of_a_removed_tag_gets_tag_removed_even_on_a_shape_change(daemon: Daemon) -> None:
    with ndsharray.NdShArray("gone2", np.zeros(3), "w") as w:
        admin.remove_tag("gone2")
        with pytest.raises(ndsharray.TagRemovedError):
            w.write(np.zeros((5, 5)))


def test_without_a_daemon_a_full_ring_waits_instead_of_failing(daemon: Daemon) -> None:
    with ndsharray.NdShArray("nogrow", np.zeros(4), "w", slots=2, write_timeout=0.2) as w, \
            ndsharray.NdShArray("nogrow", r_w="r") as r:
        held = r.read()[1]  # pins slot 0
        w.write(np.ones(4))  # slot 1, now the latest
        assert r.read()[0]  # the reader's own last view moves to slot 1
        assert daemon.stop() == 0
        # The ring cannot grow without the daemon: the bounded wait, not DaemonUnavailableError.
        with pytest.raises(ndsharray.WriterStalledError):
            w.write(np.full(4, 2.0))
        del held  # the reader lets go: slot 0 is free again, no daemon needed
        w.write(np.full(4, 3.0))
        assert r.read()[1].tolist() == [3.0] * 4
        w._closed = r._closed = True  # nothing to release: the daemon is gone


def test_a_failed_copy_read_gives_its_pin_back(daemon: Daemon, monkeypatch: Any) -> None:
    # MemoryError copying a big frame (or a KeyboardInterrupt landing there) must not leave
    # the slot pinned: with 2 slots the writer would stall for good.
    with ndsharray.NdShArray("cp", np.zeros(8), "w", slots=2, max_slots=2, write_timeout=0.5) as w, \
            ndsharray.NdShArray("cp", r_w="r") as r:
        assert r.read(copy=True)[0]
        w.write(np.ones(8))

        def failing_copy(self: segment.SegmentReader, i: int) -> Any:
            raise MemoryError("simulated: the copy of a big frame fails")

        monkeypatch.setattr(segment.SegmentReader, "copy", failing_copy)
        with pytest.raises(MemoryError):
            r.read(copy=True)
        monkeypatch.undo()
        for k in range(3):
            w.write(np.full(8, float(k)))  # both slots are free again
        assert r.read(copy=True)[1].tolist() == [2.0] * 8


def test_a_nan_or_negative_timeout_is_refused(daemon: Daemon) -> None:
    with ndsharray.NdShArray("nan", np.zeros(2), "w") as w, ndsharray.NdShArray("nan", r_w="r") as r:
        with pytest.raises(ValueError, match="NaN"):
            r.read(timeout=float("nan"))
        with pytest.raises(ValueError, match="NaN"):
            r.wait(float("nan"))
        for negative in (-1, -1.0, -0.001, np.float32(-2), -float("inf")):
            with pytest.raises(ValueError, match="timeout is negative"):
                r.read(timeout=negative)
            with pytest.raises(ValueError, match="timeout is negative"):
                r.wait(negative)
        assert r.read(timeout=0)[0] and r.read(timeout=0.0)[0] is False and r.wait(0) is False
        w.write(np.ones(2))  # a new frame on the segment this reader checked (its one-call path)
        with pytest.raises(ValueError, match="NaN"):
            r.read(timeout=float("nan"))
        not_seconds: list[Any] = ["soon", "1", True, "", []]  # "1", True passed for 1 s; "" waited forever
        for bad in not_seconds:
            with pytest.raises(TypeError, match="number of seconds"):
                r.read(timeout=bad)
        with pytest.raises(ValueError, match="timeout is negative"):
            r.read(timeout=-1.0)  # (the one-call path's pre-check sends it to the check too)
        assert r.read(timeout=0.0)[1].tolist() == [1.0, 1.0]


def test_a_write_inside_a_loan_never_replaces_the_lent_slots_segment(daemon: Daemon) -> None:
    with ndsharray.NdShArray("lend", np.zeros(4), "w", slots=2, max_slots=8, write_timeout=0.2) as w, \
            ndsharray.NdShArray("lend", r_w="r") as r:
        held = r.read()[1]  # pins the latest slot; the other one is lent out below
        segment_name = w.ndarray_mmap_name
        with w.loan() as buf:
            buf[...] = 7
            with pytest.raises(ndsharray.WriterStalledError, match="lent out by the open loan"):
                w.write(np.ones(4))  # no free slot, and growing the ring would orphan the loan
            with pytest.raises(ndsharray.NdShArrayError, match="inside a loan"):
                w.write(np.ones(5))  # a new generation would too
        assert w.ndarray_mmap_name == segment_name
        assert r.read()[1].tolist() == [7.0] * 4  # the loan was published
        assert held.tolist() == [0.0] * 4


def test_a_segment_unlinked_between_the_two_opens_is_gone_and_leaks_nothing(
        daemon: Daemon, monkeypatch: Any) -> None:
    with ndsharray.NdShArray("race", np.zeros(4), "w") as w:
        name = w.ndarray_mmap_name
        assert name is not None
        real_open = os.open
        opened: list[int] = []

        def open_then_lose_the_file(path: Any, flags: int, *args: Any) -> int:
            if opened:  # the second open: the daemon unlinked the segment just before
                raise FileNotFoundError(path)
            fd = real_open(path, flags, *args)
            opened.append(fd)
            return fd

        monkeypatch.setattr("ndsharray.segment.os.open", open_then_lose_the_file)
        with pytest.raises(ndsharray.SegmentGoneError):
            segment.SegmentReader(name)
        monkeypatch.undo()
        with pytest.raises(OSError):
            os.fstat(opened[0])  # the first fd was closed


def test_a_reader_closed_while_it_opens_the_next_generation_keeps_nothing_open(
        daemon: Daemon, monkeypatch: Any) -> None:
    # Another thread closes the reader while this one opens the segment of a new generation
    # (simulated by closing it inside the open): the new segment's fd and row must go too.
    from ndsharray import client

    def fds_on(name: str) -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").endswith("/" + name):
                    out.append(fd)
            except OSError:
                pass
        return out

    with ndsharray.NdShArray("gen2", np.zeros(4), "w") as w:
        r = ndsharray.NdShArray("gen2", r_w="r")
        assert r.read()[0]
        w.write(np.zeros(5))  # a new generation: the reader's next read opens it
        new = w.ndarray_mmap_name
        assert new is not None
        writers_fds = fds_on(new)
        real = segment.SegmentReader  # (what client calls)

        def open_while_closed(name: str) -> segment.SegmentReader:
            seg = real(name)
            r.close()
            return seg

        monkeypatch.setattr(client, "SegmentReader", open_while_closed)
        with pytest.raises(ndsharray.HandleClosedError, match="closed while it read"):
            r.read()
        assert fds_on(new) == writers_fds
        monkeypatch.setattr(client, "SegmentReader", real)
        row = next(t for t in ndsharray.list_tags() if t.tag == "gen2")
        assert all(s.get("pid") != os.getpid() for s in row.reader_stats)
