"""Handles whose daemon stops, crashes or is replaced: readers follow the next writer, a
close does not restart a stopped daemon, a closed writer is not adopted, a full ring waits.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
from arrays import digest, make_array
from conftest import Daemon, our_segments, wait_until

import ndsharray
from ndsharray import admin, config, transport
from ndsharray.registrar import registrar


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
    # another starts before the registrar's first round, that attach reached the new daemon,
    # whose answer nobody read, and the registrar took the new daemon as the one the reader
    # had registered with: the reader waited on its old segment for good (1 run in ~15 of
    # the test above, before and after this session's changes).
    first = puppets()
    first.start_writer("cam", "u1", [4], 1)
    with monkeypatch.context() as m:
        m.setattr(registrar, "_round", lambda: None)  # its first round comes late
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


def _read_in_thread(r: Any, call: str) -> tuple[threading.Thread, list[Any]]:
    """``r.read(timeout=30)`` (or ``aread``) in a thread; its result, or what it raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            if call == "read":
                out.append(r.read(timeout=30))
            else:
                out.append(asyncio.run(r.aread(timeout=30)))
        except BaseException as exc:  # (shown by the test, not lost in the thread)
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.mark.parametrize("before", ["first writer", "tag removed"])
@pytest.mark.parametrize("call", ["read", "aread"])
def test_a_blocked_read_waits_through_a_daemon_restart_for_the_next_writer(
        crashable: Daemon, puppets: Any, monkeypatch: Any, before: str, call: str) -> None:
    """A reader whose tag has no live segment asks the daemon; while none runs (killed,
    its successor not started yet) a blocking read waits on within its timeout instead of
    raising DaemonUnavailableError (NDSHARRAY_AUTOSTART=0: nobody else starts one)."""
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    with ndsharray.NdShArray("cam", r_w="r") as r:
        if before == "tag removed":  # its segment retired: the reader looks for a newer one
            first = puppets()
            first.start_writer("cam", "u1", [4], 1)
            assert r.read(timeout=10)[0]
            admin.remove_tag("cam")
            first(op="close", name="w")
        t, out = _read_in_thread(r, call)
        wait_until(lambda: r._finder._misses > 0, what="the reader to ask the daemon")
        assert crashable.proc is not None
        crashable.proc.kill()
        crashable.proc.wait()
        gone = time.monotonic()
        wait_until(lambda: r._finder._last_lookup > gone or not t.is_alive(),
                   what="the reader to look while no daemon runs")
        assert t.is_alive(), out  # still waiting, not raised
        crashable.start()
        second = puppets()
        second.start_writer("cam", "u1", [4], 2)
        t.join(25)
        assert not t.is_alive()
        status, a = out[0]
        assert status and digest(a) == digest(make_array("u1", (4,), 2))


def test_without_a_daemon_a_blocked_read_raises_only_when_its_time_is_up(
        crashable: Daemon, monkeypatch: Any) -> None:
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    with ndsharray.NdShArray("cam", r_w="r") as r:
        assert crashable.proc is not None
        crashable.proc.kill()
        crashable.proc.wait()
        with pytest.raises(ndsharray.DaemonUnavailableError):
            r.read()  # timeout 0: at once, as before
        t0 = time.monotonic()
        with pytest.raises(ndsharray.DaemonUnavailableError, match="NDSHARRAY_AUTOSTART=0"):
            r.read(timeout=0.3)
        assert time.monotonic() - t0 >= 0.3



@pytest.mark.parametrize("call", ["read", "aread"])
def test_a_blocked_read_waits_on_when_the_successor_starts_just_after_its_lookup_failed(
        crashable: Daemon, puppets: Any, monkeypatch: Any, call: str) -> None:
    """The reader's lookup finds no daemon (NDSHARRAY_AUTOSTART=0) and the successor takes
    the endpoint right after, before the reader decides whether to wait: it must wait and
    ask the successor, not raise DaemonUnavailableError out of its 30 s read because a
    daemon runs by the time it looks again. (The successor is started inside the failed
    lookup, in the reader's thread, so the window, microseconds in life, is certain here.)"""
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    real = transport.Connection._ensure_daemon
    armed: list[int] = []  # the reader thread's id, once the daemon was killed (then a 0: done)
    started: list[bool] = []

    def successor_starts_right_after(conn: transport.Connection, autostart: bool = True) -> str:
        try:
            return real(conn, autostart)
        except ndsharray.DaemonUnavailableError:
            if armed and threading.get_ident() == armed[0] and not armed[1:]:
                armed.append(0)  # (once)
                crashable.start()
                started.append(True)  # (serving now)
            raise

    monkeypatch.setattr(transport.Connection, "_ensure_daemon", successor_starts_right_after)
    with ndsharray.NdShArray("cam", r_w="r") as r:
        t, out = _read_in_thread(r, call)
        wait_until(lambda: r._finder._misses > 0, what="the reader to ask the daemon")
        assert crashable.proc is not None and t.ident is not None
        crashable.proc.kill()
        crashable.proc.wait()
        armed.append(t.ident)
        wait_until(lambda: started or not t.is_alive(), what="the reader to find no daemon")
        second = puppets()
        second.start_writer("cam", "u1", [4], 2)
        t.join(25)
        assert not t.is_alive()
        assert not isinstance(out[0], BaseException), out[0]
        status, a = out[0]
        assert status and digest(a) == digest(make_array("u1", (4,), 2))
