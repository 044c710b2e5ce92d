"""Promises of the README that no other test held to: pins outliving the view they came
from, a closed writer's last frame for late readers, what a restarting daemon adopts, the
documented limits, and handles that the garbage collector closes."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from arrays import digest, make_array
from conftest import Daemon, our_segments, wait_until

import ndsharray
from ndsharray import admin, config
from ndsharray.dtypes import MAX_DESCR_LEN
from ndsharray.layout import READER_ROWS
from ndsharray.segment.files import shm_dir
from ndsharray.segment.header import create_segment


def tag_row(tag: str) -> Any:
    return next((t for t in ndsharray.list_tags() if t.tag == tag), None)


@pytest.mark.parametrize("dtype", [np.dtype("f8"), np.dtype([("x", "<f8"), ("n", "<i4")])],
                         ids=["plain", "structured"])  # (views built in C, and in Python)
def test_a_slice_of_a_view_keeps_the_pin_after_the_view_is_dropped(daemon: Daemon, dtype: np.dtype[Any]) -> None:
    first = make_array(dtype, (16,), 1)
    with ndsharray.NdShArray("slice", first, "w", slots=2, max_slots=2, write_timeout=0.3) as w, \
            ndsharray.NdShArray("slice", r_w="r") as r:
        status, view = r.read()
        assert status
        part = view[2:9]
        del view
        w.write(make_array(dtype, (16,), 2))  # the other slot
        assert r.read()[0]  # the handle lets go of the first view: only the slice holds it
        gc.collect()
        # The one slot the writer may take (not the latest) holds the slice's frame.
        with pytest.raises(ndsharray.WriterStalledError):
            w.write(make_array(dtype, (16,), 3))
        assert digest(part) == digest(first[2:9])
        del part
        gc.collect()
        w.write(make_array(dtype, (16,), 4))  # the pin went with the slice
        status, view = r.read()
        assert status and digest(view) == digest(make_array(dtype, (16,), 4))


def test_a_late_reader_gets_a_closed_writers_last_frame_within_the_orphan_ttl(
        folder: str, monkeypatch: Any, puppets: Any) -> None:
    d = Daemon(folder, "--orphan-ttl", "3").start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    try:
        writer = puppets()
        writer.start_writer("ttl", "u2", [5], 7)
        writer(op="close", name="w")  # cleanly: no reader has ever seen the tag
        row = tag_row("ttl")
        assert row is not None and row.writer_pid is None and row.writer_left == "closed"
        # Late: after the daemon's sweeps (every second) had two chances to drop the tag.
        wait_until(lambda: (t := tag_row("ttl")) is None or t.last_write_age_s >= 1.5, what="1.5 s to pass")
        with ndsharray.NdShArray("ttl", r_w="r") as late:
            status, arr = late.read(timeout=5)
            assert status and digest(arr) == digest(make_array("u2", (5,), 7))
            del arr
        # Without readers and writer, the tag goes after --orphan-ttl, and its segment too.
        wait_until(lambda: tag_row("ttl") is None, timeout=20, what="the orphaned tag to expire")
        wait_until(lambda: not our_segments(d.prefix), what="its segment to be unlinked")
    finally:
        assert d.stop() == 0


def test_a_restarted_daemon_adopts_the_newest_generation_and_unlinks_older_ones(
        folder: str, monkeypatch: Any, puppets: Any) -> None:
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    writer = puppets()
    writer.start_writer("gens", "u1", [4], 1)
    current = writer(op="write", name="w", dtype="u1", shape=[6], seed=2)  # generation 2
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    # Older generations a daemon left behind when it died between making a new generation
    # and unlinking the old one; named to sort before and after the current one.
    older = [f"{d.prefix}{c * 16}" for c in "0f"]
    for name in older:
        create_segment(name, tag="gens", dtype_text="'|u1'", shape=(4,), nslots=3,
                               generation=1, writer_pid=writer.pid)
    d2 = Daemon(folder).start()
    try:
        assert our_segments(d.prefix) == {current}, "older generations were not unlinked"
        row = tag_row("gens")
        assert row is not None and row.segment == current and row.generation == 2
        assert row.writer_pid == writer.pid and row.shape == (6,)
        with ndsharray.NdShArray("gens", r_w="r") as r:
            status, arr = r.read()
            assert status and digest(arr) == digest(make_array("u1", (6,), 2))
            del arr
    finally:
        writer.stop()
        assert d2.stop() == 0
        for name in older:  # (only if the test failed: the daemon removes what it knows)
            if os.path.exists(f"{shm_dir()}/{name}"):
                os.unlink(f"{shm_dir()}/{name}")


def test_255_slots_is_the_limit(daemon: Daemon) -> None:
    with ndsharray.NdShArray("ring", np.arange(3.0), "w", slots=255, max_slots=255) as w, \
            ndsharray.NdShArray("ring", r_w="r") as r:
        assert tag_row("ring").slots == 255
        for k in range(300):  # round the whole ring
            w.write(np.full(3, float(k)))
        status, arr = r.read()
        assert status and arr.tolist() == [299.0] * 3
    for slots, max_slots in ((256, 256), (3, 256)):
        with pytest.raises(ValueError, match="255"):
            ndsharray.NdShArray("ring", r_w="w", slots=slots, max_slots=max_slots)


def test_256_readers_per_tag_is_the_limit(daemon: Daemon) -> None:
    readers = []
    with ndsharray.NdShArray("many", np.arange(4), "w"):
        try:
            for _ in range(READER_ROWS):
                r = ndsharray.NdShArray("many", r_w="r")
                assert r.read()[0]
                readers.append(r)
            assert READER_ROWS == 256
            with pytest.raises(ndsharray.ResourceLimitError, match="256 readers"):
                ndsharray.NdShArray("many", r_w="r").read()
            readers.pop().close()
            with ndsharray.NdShArray("many", r_w="r") as again:  # a row is free again
                assert again.read()[0]
        finally:
            for r in readers:
                r.close()


def test_dtype_descriptions_up_to_4_kib(daemon: Daemon) -> None:
    def fields(n: int, width: int) -> np.dtype[Any]:
        return np.dtype([(f"f{k:0{width}d}", "<u1") for k in range(n)])

    def size(dt: np.dtype[Any]) -> int:
        return len(ascii(np.lib.format.dtype_to_descr(dt)))

    assert MAX_DESCR_LEN == 4096
    n = 1
    while size(fields(n + 1, 12)) <= 4096:
        n += 1
    fits, too_long = fields(n, 12), fields(n + 1, 12)  # descriptions just under and over 4 KiB
    assert size(fits) > 4000
    a = make_array(fits, (3,), 5)
    with ndsharray.NdShArray("wide", a, "w") as w, ndsharray.NdShArray("wide", r_w="r") as r:
        status, got = r.read()
        assert status and got.dtype == fits and digest(got) == digest(a)
        del got
        with pytest.raises(ndsharray.UnsupportedDtypeError, match="4096"):
            w.write(np.zeros(3, too_long))


def test_handles_the_collector_closes_are_released_and_del_never_raises(
        daemon: Daemon, monkeypatch: Any) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    w = ndsharray.NdShArray("gc", np.arange(3), "w")
    r = ndsharray.NdShArray("gc", r_w="r")
    assert r.read()[0]
    wait_until(lambda: tag_row("gc").readers == 1, what="the reader to register")
    del w, r
    gc.collect()
    # The release is sent after the collection, by the registrar thread: the daemon hears it.
    row = wait_until(lambda: (t := tag_row("gc")) is not None and t.writer_pid is None and t.readers == 0 and t,
                     what="the collected handles' release")
    assert row.writer_left == "closed"
    # Whatever fails in a collected handle's release stays inside __del__.
    def broken(*args: Any) -> None:
        raise RuntimeError("release failed")
    monkeypatch.setattr(ndsharray.transport.Connection, "post", broken)
    w = ndsharray.NdShArray("gc2", np.arange(3), "w")
    del w
    gc.collect()
    # And a half-built handle (its constructor failed) is collected quietly too.
    with pytest.raises(ndsharray.DaemonUnavailableError):
        ndsharray.NdShArray("gc3", r_w="r", endpoint=f"ipc://{daemon.folder}/none.sock")
    gc.collect()
    assert unraisable == [], [str(u.exc_value) for u in unraisable]


def test_handles_left_open_at_exit_or_in_a_cycle_leave_no_error_output(daemon: Daemon) -> None:
    script = textwrap.dedent("""
        import numpy as np, ndsharray
        w = ndsharray.NdShArray("exit", np.arange(3), "w")
        r = ndsharray.NdShArray("exit", r_w="r")
        view = r.read(timeout=5)[1]
        w.cycle, r.cycle = r, w  # collected, if at all, by the final collection
        del w, r
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0 and child.stderr == "", child.stderr
    row = wait_until(lambda: (t := tag_row("exit")) is not None and t.writer_pid is None and t, what="the exit")
    assert row.writer_left == "closed" and row.readers == 0
    assert daemon.proc is not None and admin.daemon_pid(daemon.endpoint) == daemon.proc.pid  # still serving
