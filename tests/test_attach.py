"""Readers find a written tag through its pointer: no daemon round trip to attach."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
from arrays import make_array
from conftest import Daemon, wait_until

import ndsharray
from ndsharray import config, protocol, transport
from ndsharray.segment.files import segment_path


def pointer(daemon: Daemon, tag: str) -> str:
    return os.path.join(config.pointer_dir(daemon.endpoint), config.pointer_name(tag))


def test_reader_attaches_while_the_daemon_is_frozen(daemon: Daemon, puppets: Any) -> None:
    writer = puppets()
    seg = writer.start_writer("cam", "u2", [6, 5], 7)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGSTOP)  # any request would now wait for its timeout
    try:
        r = ndsharray.NdShArray("cam", r_w="r")
        status, arr = r.read()
        assert status and r.ndarray_mmap_name == seg
        np.testing.assert_array_equal(arr, make_array("u2", (6, 5), 7))
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    # The registration was posted; this process's next request goes after it.
    assert ndsharray.tag_info("cam").readers == 1
    r.close()
    assert ndsharray.tag_info("cam").readers == 0


def test_pointer_follows_generations_and_goes_with_the_tag(daemon: Daemon) -> None:
    link = pointer(daemon, "cam/left")
    with ndsharray.NdShArray("cam/left", np.zeros(3), "w") as w:
        assert os.readlink(link) == w.ndarray_mmap_name
        first = w.ndarray_mmap_name
        r = ndsharray.NdShArray("cam/left", r_w="r")
        assert r.read()[1].shape == (3,)
        w.write(np.ones((2, 2)))  # a new generation: the pointer moves before the old retires
        assert os.readlink(link) == w.ndarray_mmap_name != first
        status, arr = r.read()
        assert status and arr.shape == (2, 2) and r.ndarray_mmap_name == w.ndarray_mmap_name
        assert ndsharray.NdShArray("cam/left", r_w="r").read()[1].shape == (2, 2)
        ndsharray.remove_tag("cam/left")
        assert not os.path.lexists(link)
        r.close()
    # The daemon fixture checks that a stopped daemon leaves no pointer folder.


def test_a_pointer_to_another_tags_segment_is_not_followed(daemon: Daemon) -> None:
    with ndsharray.NdShArray("a", np.full(3, 1.0), "w"), \
            ndsharray.NdShArray("b", np.full(3, 2.0), "w") as b:
        link = pointer(daemon, "a")
        assert b.ndarray_mmap_name is not None
        os.symlink(b.ndarray_mmap_name, link + ".evil")
        os.replace(link + ".evil", link)
        with ndsharray.NdShArray("a", r_w="r") as r:
            status, arr = r.read()
            assert status and arr.tolist() == [1.0, 1.0, 1.0]  # asked the daemon instead


def test_a_pointer_to_another_daemons_segment_is_not_followed(daemon: Daemon, folder: str) -> None:
    # The same tag written at another endpoint: its segment carries the tag, and a pointer
    # planted to it names a well-formed segment name, but not one of this daemon's
    # (config.segment_prefix of this endpoint): the reader must ask its own daemon.
    other = Daemon(os.path.join(folder, "other"))
    os.mkdir(other.folder)
    other.start()
    try:
        with ndsharray.NdShArray("cam", np.full(3, 7.0), "w", endpoint=other.endpoint) as w:
            assert w.ndarray_mmap_name is not None
            os.makedirs(config.pointer_dir(daemon.endpoint), exist_ok=True)
            os.symlink(w.ndarray_mmap_name, pointer(daemon, "cam"))
            with ndsharray.NdShArray("cam", r_w="r") as r:
                status, arr = r.read()
                assert not status and arr.size == 0  # nothing at this daemon
                assert r.ndarray_mmap_name is None
            os.unlink(pointer(daemon, "cam"))
    finally:
        other.stop()


def test_daemon_restart_rebuilds_the_pointers(folder: str, monkeypatch: Any, puppets: Any) -> None:
    d = Daemon(folder).start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    writer = puppets()
    seg = writer.start_writer("cam", "u1", [4], 3)
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    os.unlink(pointer(d, "cam"))  # as if lost: the next daemon must not rely on old ones
    os.symlink("nds-stale", os.path.join(config.pointer_dir(d.endpoint), "0" * 32))
    d2 = Daemon(folder).start()  # adopts the live writer's segment
    try:
        assert os.listdir(config.pointer_dir(d.endpoint)) == [config.pointer_name("cam")]
        assert os.readlink(pointer(d, "cam")) == seg
        with ndsharray.NdShArray("cam", r_w="r") as r:
            np.testing.assert_array_equal(r.read()[1], make_array("u1", (4,), 3))
        writer(op="close", name="w")
    finally:
        assert d2.stop() == 0
    assert not os.path.exists(config.pointer_dir(d.endpoint))


def test_a_reader_whose_segment_expires_before_it_registers_follows_the_next_writer(
        folder: str, monkeypatch: Any, puppets: Any) -> None:
    # A reader found the segment through its pointer, but its registration has not reached
    # the daemon when the tag, now without writer or registered reader, expires. The
    # daemon must flag the segment retired before unlinking it, or the reader would wait
    # on it for good while the next writer publishes elsewhere.
    d = Daemon(folder, "--orphan-ttl", "0").start()
    monkeypatch.setenv(config.ENV_ENDPOINT, d.endpoint)
    monkeypatch.setenv(config.ENV_AUTOSTART, "0")
    try:
        first = puppets()
        first.start_writer("cam", "f8", [4], 1)
        with transport.connection(d.endpoint)._lock:  # holds back this process's posted attach
            r = ndsharray.NdShArray("cam", r_w="r")
            assert r.read()[0]
            name = r.ndarray_mmap_name
            assert name is not None
            first.kill()
            wait_until(lambda: not os.path.exists(segment_path(name)), what="the orphaned segment to go")
        second = puppets()
        second.start_writer("cam", "f8", [4], 2)
        status, arr = r.read(timeout=5)
        assert status and arr.tolist() == make_array("f8", (4,), 2).tolist()
        r.close()
        second(op="close", name="w")
    finally:
        assert d.stop() == 0


def test_a_reader_counts_in_ls_before_its_registration_arrives(daemon: Daemon) -> None:
    with ndsharray.NdShArray("cam", np.zeros(3), "w"):
        with transport.connection(daemon.endpoint)._lock:  # holds back this process's posted attach
            r = ndsharray.NdShArray("cam", r_w="r")
            assert r.read()[0]
            other = transport.Connection(daemon.endpoint)  # as another process would ask
            try:
                row = next(t for t in other.request(protocol.LIST).tags if t.tag == "cam")
            finally:
                other.close()
            assert row.readers == 1 and row.reader_pids == (os.getpid(),)  # its row counts it
        r.close()
