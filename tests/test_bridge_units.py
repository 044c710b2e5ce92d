"""The bridge's pure parts: tag globs, codecs, the frame header (no Zenoh, no daemon)."""

from __future__ import annotations

import dataclasses
import os
import time
import tracemalloc
import types
from typing import Any, cast

import numpy as np
import pytest

from ndsharray.bridge import pace, wire
from ndsharray.bridge.codecs import JPEG, RAW, ZSTD, Codec, CodecError, decode
from ndsharray.bridge.importer import ImportStream
from ndsharray.bridge.patterns import TagPattern
from ndsharray.dtypes import dtype_to_text, text_to_dtype
from ndsharray.layout import META_BYTES, META_JSON


@pytest.mark.parametrize("glob, tag, hit", [
    ("camera/left", "camera/left", True),
    ("camera/left", "camera/right", False),
    ("camera/*", "camera/left", True),
    ("camera/*", "camera", False),
    ("camera/*", "camera/left/raw", False),
    ("camera/**", "camera", True),
    ("camera/**", "camera/left/raw", True),
    ("camera/**", "cameras/left", False),
    ("*/left", "cam/left", True),
    ("*/left", "a/cam/left", False),
    ("**/left", "a/b/c/left", True),
    ("**/left", "left", True),
    ("a/**/z", "a/z", True),
    ("a/**/z", "a/b/c/z", True),
    ("a/**/z", "a/b/c/y", False),
    ("robot1/**", "robot10/camera", False),
    ("**", "anything/at/all", True),
])
def test_globs_match_whole_tag_parts(glob: str, tag: str, hit: bool) -> None:
    assert TagPattern.parse(glob).match(tag) is hit


@pytest.mark.parametrize("glob, word", [
    ("", "non-empty"), ("cam*/left", "whole part"), ("a//b", "not a tag part"), ("a/../b", "not a tag part"),
    ("a b", "not a tag part"),
])
def test_bad_globs_say_what_is_wrong(glob: str, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        TagPattern.parse(glob)


@pytest.mark.parametrize("spec, kind, level", [
    ("raw", RAW, 0), ("zstd", ZSTD, 1), ("zstd:9", ZSTD, 9), ("jpeg", JPEG, 90), ("JPEG:75", JPEG, 75),
])
def test_codec_specs(spec: str, kind: int, level: int) -> None:
    c = Codec.parse(spec)
    assert (c.kind, c.level) == (kind, level)
    assert Codec.parse(str(c)) == c


@pytest.mark.parametrize("spec", ["gzip", "raw:3", "zstd:0", "zstd:23", "jpeg:0", "jpeg:101", "jpeg:high"])
def test_bad_codec_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="codec"):
        Codec.parse(spec)


ARRAYS: list[np.ndarray[Any, Any]] = [
    np.arange(24, dtype=np.uint16).reshape(2, 3, 4),
    np.linspace(-1, 1, 35, dtype=np.float64).reshape(5, 7)[:, ::2],  # not contiguous
    np.array([(1, 2.5), (3, -1.0)], dtype=[("a", "<i4"), ("b", ">f8")]),
    np.zeros((0, 3), dtype=np.int8),
    np.array(7, dtype=np.complex64),
    np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
]


@pytest.mark.parametrize("spec", ["raw", "zstd", "zstd:19"])
@pytest.mark.parametrize("i", range(len(ARRAYS)))
def test_lossless_codecs_round_trip_any_dtype_bit_exact(spec: str, i: int) -> None:
    a = ARRAYS[i]
    c = Codec.parse(spec)
    out = decode(c.kind, c.encode(a), text_to_dtype(dtype_to_text(a.dtype)), a.shape)
    assert out.dtype == a.dtype and out.shape == a.shape
    assert out.tobytes() == np.ascontiguousarray(a).tobytes()


def _image(shape: tuple[int, ...]) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    img = x * 200 // shape[1] + y * 55 // shape[0]  # a smooth ramp: what JPEG is for
    if len(shape) == 3:
        img = np.stack([img, 255 - img, (img // 2)], axis=-1)
    out: np.ndarray = img.astype(np.uint8)
    return out


@pytest.mark.parametrize("shape", [(48, 64), (48, 64, 3)])
def test_jpeg_round_trips_images_within_a_stated_error(shape: tuple[int, ...]) -> None:
    a = _image(shape)
    c = Codec.parse("jpeg:90")
    payload = c.encode(a)
    assert len(payload) < a.nbytes
    out = decode(JPEG, payload, a.dtype, a.shape)
    assert out.shape == a.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - a.astype(int))
    assert err.mean() < 2 and err.max() < 16  # the README states these bounds (quality 90)


@pytest.mark.parametrize("a", [
    np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8), np.zeros((16,), np.uint8),
    np.zeros((4, 4), np.float32),
])
def test_jpeg_refuses_arrays_that_are_not_images(a: np.ndarray) -> None:
    c = Codec.parse("jpeg")
    with pytest.raises(CodecError, match=r"JPEG carries only uint8 images.*--codec raw or --codec zstd"):
        c.encode(a)
    with pytest.raises(CodecError, match="tag 'depth'"):
        c.check(a.dtype, a.shape, "depth")


def test_decode_refuses_payloads_that_do_not_fit_the_header() -> None:
    with pytest.raises(CodecError, match="needs 8 bytes"):
        decode(RAW, b"1234567", np.dtype(np.uint8), (8,))
    with pytest.raises(CodecError, match="zstd"):
        decode(ZSTD, b"not zstd", np.dtype(np.uint8), (8,))
    with pytest.raises(CodecError, match="needs 16 bytes"):
        decode(ZSTD, Codec.parse("zstd").encode(np.zeros(1 << 20, np.uint8)), np.dtype(np.uint8), (16,))


def test_a_zstd_bomb_is_refused_before_it_is_decompressed() -> None:
    """A peer's few KB announcing 256 MiB for a 16-byte frame: refused without allocating."""
    bomb = Codec.parse("zstd").encode(np.zeros(256 << 20, np.uint8))
    assert len(bomb) < 64 << 10
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="needs 16 bytes"):
            decode(ZSTD, bomb, np.dtype(np.uint8), (16,))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding the bomb allocated {peak} bytes"
    with pytest.raises(CodecError, match="JPEG"):
        decode(JPEG, b"\xff\xd8 no jpeg", np.dtype(np.uint8), (4, 4))
    with pytest.raises(CodecError, match="unknown codec"):
        decode(9, b"", np.dtype(np.uint8), (0,))


def test_frame_header_round_trips() -> None:
    f = wire.Frame(codec=ZSTD, dtype=dtype_to_text(np.dtype("<f4")), shape=(720, 1280, 3), count=2**40 + 1,
                   write_ns=123456789012345, age_ns=4567, credit=99, hold_ns=1000, meta_kind=META_JSON,
                   meta=b'{"exposure": 3}', meta_capacity=4096)
    assert wire.Frame.unpack(f.pack()) == f
    empty = wire.Frame(dtype="'<u1'", meta_kind=META_BYTES, meta=b"", meta_capacity=16)  # (b"" is metadata too)
    assert wire.Frame.unpack(empty.pack()) == empty
    sent = dataclasses.replace(f, credit=2**63 + 5, hold_ns=77, age_ns=-3)
    assert wire.stamped(dataclasses.replace(f, credit=0, hold_ns=0, age_ns=0).pack(), 2**63 + 5, 77, -3) == sent.pack()
    end = wire.Frame(wire.END, reason="died", count=17, credit=3)
    back = wire.Frame.unpack(end.pack())
    assert (back.kind, back.reason, back.count) == (wire.END, "died", 17)


@pytest.mark.parametrize("mangle, word", [
    (lambda b: b[:10], "shorter"),
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:4] + bytes([9]) + b[5:], "version 9"),
    (lambda b: b + b"x", "its fields say"),
    (lambda b: b[:7] + bytes([200]) + b[8:], "malformed"),
    (lambda b: b[:8] + bytes([7]) + b[9:], "malformed"),  # an unknown metadata kind
])
def test_frame_header_rejects_what_is_not_one(mangle: object, word: str) -> None:
    good = wire.Frame(dtype="'<u1'", shape=(2, 2)).pack()
    with pytest.raises(ValueError, match=word):
        wire.Frame.unpack(mangle(good))  # type: ignore[operator]


def test_a_header_restamped_for_another_frame_is_that_frames_header() -> None:
    a = wire.Frame(codec=1, dtype="'<f4'", shape=(3, 4), count=7, write_ns=123, meta_kind=META_JSON,
                   meta=b'{"x":1}', meta_capacity=64)
    b = dataclasses.replace(a, count=2**40 + 5, write_ns=-(2**62))
    assert wire.restamped(a.pack(), b.count, b.write_ns) == b.pack()
    assert wire.Frame.unpack(wire.restamped(a.pack(), 9, 10)) == dataclasses.replace(a, count=9, write_ns=10)


def test_a_header_like_one_seen_before_unpacks_to_the_same_frame() -> None:
    seen: dict[bytes, wire.Frame] = {}
    a = wire.Frame(codec=1, dtype="'<f4'", shape=(3, 4), count=7, write_ns=123, age_ns=4, credit=9, hold_ns=2,
                   meta_kind=META_JSON, meta=b'{"x":1}', meta_capacity=64)
    for f in (a, dataclasses.replace(a, count=8, write_ns=-5, age_ns=6, credit=2**63, hold_ns=1),
              dataclasses.replace(a, shape=(4, 3)), dataclasses.replace(a, meta=b'{"x":2}'),
              wire.Frame(wire.END, reason="closed", count=3, credit=4)):
        for _ in range(2):  # (unknown, then seen)
            assert wire.unpack_frame(f.pack(), seen) == f
    assert len(seen) == 3  # (each FRAME header once, whatever its per-frame fields; no END)
    with pytest.raises(ValueError, match="bad magic"):
        wire.unpack_frame(b"XXXX" + a.pack()[4:], seen)
    for i in range(wire.KEEP_HEADERS + 5):  # a peer sending ever new headers: a bounded memory
        wire.unpack_frame(dataclasses.replace(a, shape=(i,)).pack(), seen)
    assert len(seen) <= wire.KEEP_HEADERS


def test_a_header_with_big_metadata_is_not_remembered() -> None:
    seen: dict[bytes, wire.Frame] = {}
    big = wire.Frame(dtype="'<u1'", shape=(4,), meta_kind=META_BYTES, meta=bytes(wire.KEEP_HEADER_BYTES),
                     meta_capacity=1 << 20)
    for f in (big, dataclasses.replace(big, count=2)):
        assert wire.unpack_frame(f.pack(), seen) == f
    assert seen == {}  # (64 such headers of 16 MiB metadata each would keep a GiB)
    small = dataclasses.replace(big, meta=b"x" * 100)
    assert wire.unpack_frame(small.pack(), seen) == small and len(seen) == 1


def test_credits_and_keys() -> None:
    assert wire.unpack_credit(wire.pack_credit(5, True)) == (5, True, 1)
    assert wire.unpack_credit(wire.pack_credit(2**63, False, wire.WINDOW)) == (2**63, False, wire.WINDOW)
    with pytest.raises(ValueError):
        wire.unpack_credit(b"NDSB")
    for count in (0, wire.WINDOW + 1):
        with pytest.raises(ValueError, match="a credit for"):
            wire.unpack_credit(wire.pack_credit(1, False, count))
    key = wire.frame_key("robot1", "abc123", "camera/@left")
    assert key == "ndsharray/robot1/frame/abc123/camera/%40left"  # '@' chunks are Zenoh's own
    assert wire.split_key(key, "frame", with_peer=True) == ("robot1", "abc123", "camera/@left")
    assert wire.split_key(wire.tags_key("robot1", "a/b"), "tags", with_peer=False) == ("robot1", "", "a/b")
    with pytest.raises(ValueError):
        wire.split_key("ndsharray/robot1/frame/abc", "frame", with_peer=True)
    with pytest.raises(ValueError, match="bridge name"):
        wire.check_name("a/b")


def test_the_reasons_file_is_read_only_when_it_is_ours_and_well_formed(tmp_path: Any) -> None:
    from ndsharray.bridge.endings import EndingsFile, path_for, reasons

    endpoint = f"ipc://{tmp_path}/d.sock"
    EndingsFile("ws", endpoint).write(lambda: {"robot1/cam": "source writer on robot1 died"})
    assert reasons(endpoint) == {(os.getpid(), "robot1/cam"): "source writer on robot1 died"}
    # A link planted in its place is never followed; a file that is not one of ours is skipped.
    target = tmp_path / "elsewhere.json"
    target.write_text('{"pid": 1, "ended": {"x": "planted"}}')
    os.symlink(target, path_for("evil", endpoint))
    (tmp_path / "bridge-junk.ended.json").write_text("not json")
    (tmp_path / "bridge-list.ended.json").write_text("[1, 2]")
    assert reasons(endpoint) == {(os.getpid(), "robot1/cam"): "source writer on robot1 died"}
    EndingsFile("ws", endpoint).remove()
    assert reasons(endpoint) == {}


def test_a_write_time_crosses_hosts_as_wall_clock_time_clamped_to_now_and_the_previous_frame() -> None:
    from ndsharray.bridge.clocks import local_stamp, wall_of

    before = time.monotonic_ns()
    stamp = before - 50_000_000  # written 50 ms ago on "A"
    back = local_stamp(wall_of(stamp), 0)  # and brought back on "B" (this same machine)
    assert abs(back - stamp) < 2_000_000
    # A source clock ahead of ours: never a frame from the future.
    future = local_stamp(time.time_ns() + 3_600 * 10**9, 0)
    assert before <= future <= time.monotonic_ns()
    # A clock stepped back between two frames: write times within a tag never go backwards.
    assert local_stamp(wall_of(stamp) - 10**9, back) == back
    # Nor to 0 ("no frame"), however far behind the source clock is.
    assert local_stamp(0, 0) == 1


class _Session:
    """Records each credit put, and whether the stream's lock was held during it."""

    def __init__(self) -> None:
        self.stream: ImportStream | None = None
        self.puts: list[tuple[int, bool, int, bool]] = []  # credit id, force, count, lock held

    def put(self, key: str, data: bytes, **_: Any) -> None:
        assert self.stream is not None
        self.puts.append((*wire.unpack_credit(data), self.stream.lock.locked()))


def _stream() -> tuple[ImportStream, _Session]:
    """An import stream whose importer has a session recording its puts (no Zenoh, no daemon)."""
    session = _Session()
    importer = types.SimpleNamespace(session=session, zid="z", stale_after_ns=int(5e8), zenoh=types.SimpleNamespace(
        CongestionControl=types.SimpleNamespace(BLOCK="block")))
    stream = session.stream = ImportStream(cast(Any, importer), "robot1", "cam")
    return stream, session


def test_credits_are_put_in_order_after_the_stream_lock_is_released() -> None:
    # A put blocks while Zenoh's tx queue is full (a stalled link): under the lock it would
    # hold up on_token(alive=False) and on_frame for as long.
    stream, session = _stream()
    assert stream.on_token(True)
    stream.live, stream.asked_ns = True, 1  # (a credit long unanswered: tick grants the window again)
    stream.tick(time.monotonic_ns())
    assert [(c, held) for c, _, _, held in session.puts] == [(1, False), (2, False)]


def test_the_credit_window_is_wide_for_small_frames_and_narrow_for_big_ones() -> None:
    # On a link slower than the frames come, each big frame in flight adds its transfer time
    # to the age of the newest one delivered ("latest value, never a backlog"); small frames
    # gain from fewer credit messages and cost the link next to nothing.
    assert wire.window(1024) == (wire.WINDOW, wire.CREDIT_BATCH) == (4, 2)
    assert wire.window(wire.SMALL_FRAME) == (4, 2)
    assert wire.window(720 * 1280 * 3) == wire.window(wire.SMALL_FRAME + 1) == (wire.BIG_WINDOW, 1) == (2, 1)
    stream, session = _stream()
    arrived = [0]

    def arrive(nbytes: int, frames: int) -> list[int]:
        """Frames of ``nbytes`` arrive: the frames each credit message grants."""
        before = len(session.puts)
        for _ in range(frames):
            with stream.lock:
                stream._give_back(nbytes)
            stream.send()
            arrived[0] += 1
        return [n for _, _, n, _ in session.puts[before:]]

    def in_flight() -> int:  # (granted, not arrived yet)
        return sum(n for _, _, n, _ in session.puts) - arrived[0]

    assert stream.on_token(True)
    assert [n for _, _, n, _ in session.puts] == [2]  # (the size unknown yet: the narrow window)
    assert arrive(720 * 1280 * 3, 3) == [1, 1, 1] and in_flight() == 2  # each credit back at once
    assert arrive(1024, 3) == [3, 2] and in_flight() == 4  # widened with the first small frame
    assert arrive(1024, 1) == [] and in_flight() == 3  # (its credit goes with the next one's)
    assert arrive(720 * 1280 * 3, 1) == [] and in_flight() == 2  # narrowed: two credits kept
    assert arrive(720 * 1280 * 3, 3) == [1, 1, 1] and in_flight() == 2  # then one back per frame


def test_a_frame_is_stale_for_a_stall_not_for_a_link_that_is_merely_slow() -> None:
    s = int(0.5e9)  # stale_after
    big = 256 << 20  # 256 MiB over 1 Gbit/s: about 2 s a frame

    def slow_link() -> int:
        return pace.learn(0, int(2e9), big)  # (what the first frame taken teaches)

    # Nothing learnt yet: stale_after alone (a frame of a fast link).
    assert not pace.late(0, int(0.4e9), 1024, s) and pace.late(0, int(0.6e9), 1024, s)
    # A slow link: a frame that took what the link needs, or a little more (jitter), is
    # taken; one late by more than stale_after and more than a transfer (a stall) is not.
    p = slow_link()
    assert not pace.late(p, int(2e9), big, s)
    assert not pace.late(p, int(3.9e9), big, s)  # (asking for the newest would cost 2 s more)
    assert pace.late(p, int(4.1e9), big, s)
    # A frame of another size is judged by its size (the pace is per byte).
    assert not pace.late(p, int(1.9e9), big // 2, s) and pace.late(p, int(2.1e9), big // 2, s)
    # A fast link: stale_after rules, the need is next to nothing.
    p = pace.learn(0, int(1e6), 1024)
    assert not pace.late(p, int(0.5e9), 1024, s) and pace.late(p, int(0.51e9), 1024, s)
    # It follows a slower frame at once, a faster one an eighth of the way per frame.
    p = slow_link()
    assert pace.learn(p, int(3e9), big) > p
    faster = pace.learn(p, int(1e9), big)
    assert p > faster > pace.learn(faster, int(1e9), big) > pace.learn(0, int(1e9), big)
    assert (p - faster) * 8 == pytest.approx(p - pace.learn(0, int(1e9), big), rel=1e-3)
    # A negative time on the link (a hold the exporter overstated) teaches nothing odd.
    assert pace.learn(0, -5, big) == 0 and not pace.late(0, 0, big, s)
