"""Handles and daemons coming and going: takeovers, restarts, stops and closes (issue 10)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, our_segments, wait_until

import ndsharray
from ndsharray import admin, config, segment


@pytest.fixture
def crashable(folder: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A daemon that tests may SIGKILL; clients may auto-start its successor."""
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "1")
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()
    admin.stop_daemon(d.endpoint)  # a successor started by a client
    assert not our_segments(d.prefix)


def kill_daemon(d: Daemon) -> int:
    """SIGKILL the daemon that serves ``d``'s endpoint now (the first, or a successor a
    client started); returns its pid once it is gone."""
    pid = admin.daemon_pid(d.endpoint)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    if d.proc is not None and d.proc.pid == pid:
        d.proc.wait()
    wait_until(lambda: admin.daemon_pid(d.endpoint) != pid, what="the daemon's lock to go")
    return pid


def tag_row(tag: str) -> Any:
    return next((t for t in ndsharray.list_tags() if t.tag == tag), None)


# ---- a takeover writer whose offered segment went (review defects 3 and 4) ----------------


def test_a_takeover_writer_of_a_removed_tag_gets_tag_removed(daemon: Daemon) -> None:
    first = ndsharray.NdShArray("offer", np.zeros(4), "w")
    first.close()  # the tag keeps its segment: the next writer is offered it
    with ndsharray.NdShArray("offer", r_w="w") as second:
        admin.remove_tag("offer")  # before the second writer opened the offered segment
        with pytest.raises(ndsharray.TagRemovedError, match="removed"):
            second.write(np.ones(4))


def test_a_takeover_writers_first_write_after_a_daemon_crash_succeeds(
        crashable: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ndsharray.NdShArray("offer", np.zeros(4), "w")
    first.close()
    with ndsharray.NdShArray("offer", r_w="w") as second:
        offered = second._offered
        assert offered is not None
        monkeypatch.setenv(config.ENV_AUTOSTART, "0")  # this test starts the successor
        kill_daemon(crashable)
        # A successor that does not keep the offered segment (its retention ran out):
        os.unlink(segment.segment_path(offered["name"]))
        crashable.proc = Daemon(crashable.folder).start().proc
        second.write(np.ones(4))  # the first write after the restart publishes
        with ndsharray.NdShArray("offer", r_w="r") as r:
            status, a = r.read(timeout=10)
            assert status and a.tolist() == [1.0] * 4
