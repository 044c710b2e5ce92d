"""Malformed input from other processes: raw frames at the daemon and garbage in a
segment's reader rows get an error or are ignored; the daemon and the writer go on.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import Daemon

import ndsharray
from ndsharray import protocol
from ndsharray.layout import OFF_ROWS_USED, ROW_SIZE
from ndsharray.segment.files import segment_path


def raw_exchange(endpoint: str, frames: list[bytes], expect_reply: bool = True) -> Any:
    """Send raw frames from a DEALER socket; return the decoded reply or None."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(3000 if expect_reply else 300):
            return None
        return json.loads(sock.recv())
    finally:
        sock.close(0)


MALFORMED: list[tuple[list[bytes], str | None]] = [
    ([b"\xff\xfe\x00garbage"], "BAD_REQUEST"),
    ([b'{"v": 1, "id": 3, "op": "list"'], "BAD_REQUEST"),  # truncated
    ([b"[]"], "BAD_REQUEST"),
    ([b'{"v": 1, "id": "x", "op": "list"}'], "BAD_REQUEST"),
    ([b'{"v": 2, "id": 1, "op": "list"}'], "BAD_VERSION"),
    ([b'{"v": 1, "id": 1, "op": "shutdown"}'], "UNKNOWN_OP"),
    ([json.dumps({"v": 1, "id": 1, "op": "claim", "tag": "a\u0000b", "pid": 1,
                  "token": "ab" * 8}).encode()], "BAD_REQUEST"),
    ([json.dumps({"v": 1, "id": 1, "op": "claim", "tag": ["list"], "pid": 1,
                  "token": "ab" * 8}).encode()], "BAD_REQUEST"),
    ([json.dumps({"v": 1, "id": 1, "op": "generation", "tag": "t", "pid": 1, "token": "ab" * 8,
                  "dtype": "'<f8'", "shape": [-5], "slots": 3}).encode()], "BAD_REQUEST"),
    ([json.dumps({"v": 1, "id": 1, "op": "generation", "tag": "t", "pid": 1, "token": "ab" * 8,
                  "dtype": "'<f8'", "shape": [7] * 9000, "slots": 3}).encode()], "BAD_REQUEST"),
    ([b"{}", b"{}"], "BAD_REQUEST"),  # two frames
    ([b'{"v": 1, "id": 1, "op": "list", "pad": "' + b"x" * 2_000_000 + b'"}'], None),  # too big: dropped
    ([json.dumps({"v": 1, "id": 1, "op": "lookup", "tag": "t" * 1_000_000}).encode()], None),
]


def test_malformed_frames_get_errors_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    with ndsharray.NdShArray("keep", np.arange(4.0), "w") as w, ndsharray.NdShArray("keep", r_w="r") as r:
        before = [t.as_json() for t in ndsharray.list_tags()]
        for frames, code in MALFORMED:
            reply = raw_exchange(daemon.endpoint, frames, expect_reply=code is not None)
            if code is None:
                assert reply is None
            else:
                assert reply["ok"] is False and reply["error"]["code"] == code, (frames[0][:60], reply)
        after = [t.as_json() for t in ndsharray.list_tags()]
        for row in before + after:
            row.pop("last_write_age_s")
            row.pop("rate_hz")  # sampled by the daemon once a second: None, then 0.0
        assert after == before  # registry unchanged
        # And it still creates, serves and cleans up.
        w.write(np.zeros((2, 2)))
        assert r.read()[1].shape == (2, 2)
        with ndsharray.NdShArray("new", np.ones(3), "w"):
            assert {t.tag for t in ndsharray.list_tags()} == {"keep", "new"}
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_the_daemon_refuses_a_generation_whose_shape_numpy_cannot_index(daemon: Daemon) -> None:
    # (2**61, 2**61, 0) is 0 bytes, but no reader could build its view (review defect 6).
    with ndsharray.NdShArray("huge", r_w="w") as w:
        with pytest.raises(ndsharray.DaemonError, match="more than numpy can index") as err:
            w._conn.request(protocol.GENERATION, tag="huge", pid=os.getpid(), token=w._token, dtype="'|u1'",
                            shape=[2**61, 2**61, 0], slots=3)
        assert err.value.code == "BAD_REQUEST"
        w.write(np.zeros((2, 0)))  # a zero-size array numpy can index is fine
        assert w.shape == (2, 0)


def test_daemon_error_replies_carry_the_request_id(daemon: Daemon) -> None:
    reply = raw_exchange(daemon.endpoint, [protocol.encode_request(42, "claim", tag="t", pid=0,
                                                                     token="ab" * 8)])
    assert reply["id"] == 42 and "field 'pid'" in reply["error"]["message"]


def test_garbage_in_the_reader_rows_does_not_stop_the_writer(daemon: Daemon) -> None:
    # Pins of readers that are gone (or bytes written by anyone with access to the file)
    # look like pins on every slot: the writer must find that no live reader holds those
    # rows and clear them, and a huge "rows in use" word must not send it past the table.

    with ndsharray.NdShArray("rows", np.zeros(8), "w", slots=3, max_slots=3, write_timeout=1.0) as w, \
            ndsharray.NdShArray("rows", r_w="r") as r:
        status, held = r.read()  # a live reader keeps a pin: its row must survive
        assert status
        seg = w._seg
        assert seg is not None
        lay = seg.layout
        fd = os.open(segment_path(seg.name), os.O_RDWR)
        try:
            for row in range(1, 40):  # row 0 is the live reader's
                os.pwrite(fd, b"\xff" * ROW_SIZE, lay.rows_offset + ROW_SIZE * row)
            os.pwrite(fd, (0xFFFFFFFF).to_bytes(4, "little"), OFF_ROWS_USED)
        finally:
            os.close(fd)
        (info,) = ndsharray.list_tags()  # the daemon reads the rows too: pid 0xFFFFFFFF is no process
        assert [s["pid"] for s in info.reader_stats] == [os.getpid()]
        for k in range(1, 6):
            w.write(np.full(8, float(k)))  # would stall (WriterStalledError) if it trusted them
            status, got = r.read()
            assert status and got.tolist() == [float(k)] * 8
        assert held.tolist() == [0.0] * 8  # the live reader's pinned view never changed
        assert w.ndarray_mmap_name == seg.name  # no new generation was needed
