"""Handles whose daemon stops, crashes or is replaced: readers follow the next writer, a
close does not restart a stopped daemon, a closed writer is not adopted, a full ring waits.
"""

from __future__ import annotations

import signal
from typing import Any

import numpy as np
import pytest
from arrays import digest, make_array
from conftest import Daemon, our_segments

import ndsharray
from ndsharray import admin, config
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
