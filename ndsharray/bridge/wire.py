"""What the bridges say to each other over Zenoh: key expressions, frame headers and
credits. Pure: no Zenoh, no daemon.

Keys (``<tag>`` is the tag's parts, each part starting with '@' escaped as '%40' because
Zenoh keeps such chunks out of wildcards)::

    ndsharray/<bridge>/alive/<zid>                liveliness token of a running bridge
    ndsharray/<bridge>/tags/<tag>                 liveliness token: an exported tag has a writer
    ndsharray/<bridge>/catalog                    queryable: JSON list of the exported tags
    ndsharray/<exporter>/credit/<importer zid>/<tag>   importer -> exporter: "send me the next frame"
    ndsharray/<exporter>/frame/<importer zid>/<tag>    exporter -> importer: a frame, or end of stream

A frame is a Zenoh sample: the payload is the codec's bytes, the attachment this module's
header (dtype, shape, the writer's count and write time, codec, the credit it answers, and
the frame's metadata as the writer gave it: its kind and bytes, and the writer's metadata
capacity). Everything received is checked before use: a peer is
another machine.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import UsageError
from ..layout import META_BYTES, META_JSON, META_NONE
from ..protocol import check_tag
from ..segment.header import MAX_META_CAPACITY

ROOT = "ndsharray"
MAGIC = b"NDSB"
VERSION = 4  # 2: the frame's metadata kind and capacity; 3: write_ns is wall-clock time; 4: credit counts
FRAME, END = 1, 2
MAX_NDIM = 32
MAX_TEXT = 4096  # dtype description or end-of-stream reason

# magic, version, kind, codec, ndim, meta kind, credit, hold_ns, count, write_ns, age_ns, text len,
# meta len, meta capacity
_HEAD = struct.Struct("<4sBBBBBQQQqqHII")
# Where the per-send fields sit in a packed header (credit, hold_ns; age_ns): an exporter packs
# a frame's header once and stamps these into a copy for each send (see stamped()).
_CREDIT_HOLD_AT, _AGE_AT = struct.calcsize("<4sBBBBB"), struct.calcsize("<4sBBBBBQQQq")
_CREDIT_HOLD, _AGE = struct.Struct("<QQ"), struct.Struct("<q")
_COUNT_WRITE_AT, _COUNT_WRITE = struct.calcsize("<4sBBBBBQQ"), struct.Struct("<Qq")  # (count, write_ns)
_PER_FRAME, _PER_FRAME_END = struct.Struct("<QQQqq"), struct.calcsize("<4sBBBBBQQQqq")  # credit .. age_ns
KEEP_HEADERS = 64  # headers an importer remembers (unpack_frame): a peer may send any number
# ... and only headers up to this size: metadata may be up to MAX_META_CAPACITY (16 MiB) a
# frame, and big metadata is rarely the same twice (a per-frame timestamp never is).
KEEP_HEADER_BYTES = 4096
_CREDIT = struct.Struct("<4sBBQH")  # magic, version, flags, credit id, how many frames it grants
FORCE = 1  # credit flag: send the newest frame even if it was sent before
# Credits: an importer keeps a window of frames granted to an exporter (frames in flight to
# it, at most, so a stalled link holds no more); window() says how many by the frames' size.
# Small frames: WINDOW, given back CREDIT_BATCH at a time: one credit message for every two
# frames, each message costing both bridges a Zenoh put and its wake-ups (on a 2-core
# machine, time taken from the frames' own path). Frames above SMALL_FRAME bytes: BIG_WINDOW,
# each credit back at once: on a link slower than the frames come, every frame in flight
# adds its transfer time to the age of the newest frame delivered (720p raw on a 30 MB/s
# link: 90 ms a frame), while a credit message is nothing next to the frame's own cost.
WINDOW = 4  # (the most an exporter keeps)
CREDIT_BATCH = 2
BIG_WINDOW = 2
SMALL_FRAME = 64 * 1024  # bytes on the wire (after the codec)


def window(nbytes: int) -> tuple[int, int]:
    """(frames granted at a time, credits given back per message) for frames of ``nbytes``
    bytes on the wire."""
    return (WINDOW, CREDIT_BATCH) if nbytes <= SMALL_FRAME else (BIG_WINDOW, 1)


@dataclass(frozen=True)
class Frame:
    """One frame's header (``kind == FRAME``) or an end of stream (``kind == END``)."""

    kind: int = FRAME
    codec: int = 0
    dtype: str = ""  # ndsharray.dtypes.dtype_to_text(); empty for END
    shape: tuple[int, ...] = ()
    count: int = 0  # the source writer's write_count
    write_ns: int = 0  # the source writer's write time, wall clock (ns since the epoch: clocks.py)
    age_ns: int = 0  # how old the frame was when the exporter sent it
    credit: int = 0  # the importer's credit this frame answers
    hold_ns: int = 0  # exporter: from that credit's arrival to this send
    reason: str = ""  # END: "closed", "died", "stopped"
    meta_kind: int = META_NONE  # META_NONE (no metadata), META_BYTES or META_JSON (ndsharray.layout)
    meta: bytes = field(default=b"", repr=False)  # the frame's metadata as its writer stored it
    meta_capacity: int = 0  # the source writer's metadata capacity per frame

    def pack(self) -> bytes:
        text = (self.dtype if self.kind == FRAME else self.reason).encode()
        if len(text) > MAX_TEXT or len(self.meta) > MAX_META_CAPACITY or len(self.shape) > MAX_NDIM:
            raise ValueError("frame header too large")
        head = _HEAD.pack(MAGIC, VERSION, self.kind, self.codec, len(self.shape), self.meta_kind, self.credit,
                          self.hold_ns, self.count, self.write_ns, self.age_ns, len(text), len(self.meta),
                          self.meta_capacity)
        return b"".join((head, struct.pack(f"<{len(self.shape)}Q", *self.shape), text, self.meta))

    @classmethod
    def unpack(cls, data: bytes) -> Frame:
        if len(data) < _HEAD.size:
            raise ValueError(f"frame header of {len(data)} bytes, shorter than {_HEAD.size}")
        (magic, version, kind, codec, ndim, meta_kind, credit, hold_ns, count, write_ns, age_ns, tlen,
         mlen, meta_capacity) = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise ValueError("not an ndsharray bridge frame (bad magic)")
        if version != VERSION:
            raise ValueError(f"frame format version {version}, this bridge speaks {VERSION}: upgrade both sides")
        if (kind not in (FRAME, END) or ndim > MAX_NDIM or tlen > MAX_TEXT
                or meta_kind not in (META_NONE, META_BYTES, META_JSON) or (meta_kind == META_NONE and mlen)
                or not mlen <= meta_capacity <= MAX_META_CAPACITY):
            raise ValueError("malformed frame header")
        off = _HEAD.size
        end = off + 8 * ndim + tlen + mlen
        if len(data) != end:
            raise ValueError(f"frame header is {len(data)} bytes, its fields say {end}")
        shape = struct.unpack_from(f"<{ndim}Q", data, off)
        off += 8 * ndim
        try:
            text = data[off:off + tlen].decode()
        except UnicodeDecodeError:
            raise ValueError("frame header text is not UTF-8") from None
        meta = bytes(data[off + tlen:end])
        if kind == END:
            return cls(END, reason=text, count=count, credit=credit)
        return cls(FRAME, codec, text, tuple(shape), count, write_ns, age_ns, credit, hold_ns, meta_kind=meta_kind,
                   meta=meta, meta_capacity=meta_capacity)


def unpack_frame(data: bytes, seen: dict[bytes, Frame]) -> Frame:
    """``Frame.unpack(data)``, in a fraction of the time for a FRAME header that differs from
    one in ``seen`` only in its per-frame fields (credit, hold_ns, count, write_ns, age_ns):
    the rest was checked when it came first. ``seen`` keeps up to KEEP_HEADERS of them, each
    at most KEEP_HEADER_BYTES long."""
    key = data[:_CREDIT_HOLD_AT] + data[_PER_FRAME_END:]
    known = seen.get(key)
    if known is None:
        head = Frame.unpack(data)
        if head.kind == FRAME and len(data) <= KEEP_HEADER_BYTES:
            if len(seen) >= KEEP_HEADERS:
                seen.clear()
            seen[key] = head
        return head
    out = object.__new__(Frame)  # (a frozen dataclass: its fields set as replace() would, faster)
    fields = out.__dict__
    fields.update(known.__dict__)
    fields["credit"], fields["hold_ns"], fields["count"], fields["write_ns"], fields["age_ns"] = \
        _PER_FRAME.unpack_from(data, _CREDIT_HOLD_AT)
    return out


def stamped(packed: bytes, credit: int, hold_ns: int, age_ns: int) -> bytes:
    """``packed`` (a FRAME header from :meth:`Frame.pack`) with these per-send fields: what
    ``dataclasses.replace(frame, credit=..., hold_ns=..., age_ns=...).pack()`` gives, in a
    fraction of the time."""
    out = bytearray(packed)
    _CREDIT_HOLD.pack_into(out, _CREDIT_HOLD_AT, credit, hold_ns)
    _AGE.pack_into(out, _AGE_AT, age_ns)
    return bytes(out)


def restamped(packed: bytes, count: int, write_ns: int) -> bytes:
    """``packed`` (a FRAME header from :meth:`Frame.pack`) for another frame of the same
    dtype, shape and metadata: what ``dataclasses.replace(frame, count=..., write_ns=...).pack()``
    gives, without building and packing a Frame for each frame."""
    out = bytearray(packed)
    _COUNT_WRITE.pack_into(out, _COUNT_WRITE_AT, count, write_ns)
    return bytes(out)


def pack_credit(credit: int, force: bool, count: int = 1) -> bytes:
    """A credit message: ``count`` frames (1 to WINDOW) against credit id ``credit``;
    ``force``: the first of them is the newest frame even if it was sent before."""
    return _CREDIT.pack(MAGIC, VERSION, FORCE if force else 0, credit, count)


def unpack_credit(data: bytes) -> tuple[int, bool, int]:
    """(credit id, force, frames granted) of a credit message; ValueError if it is not one."""
    if len(data) != _CREDIT.size:
        raise ValueError("not a credit message")
    magic, version, flags, credit, count = _CREDIT.unpack(data)
    if magic != MAGIC or version != VERSION:
        raise ValueError("not a credit message of this bridge version")
    if not 1 <= count <= WINDOW:
        raise ValueError(f"a credit for {count} frames (1 to {WINDOW})")
    return credit, bool(flags & FORCE), count


# ---- keys -----------------------------------------------------------------------------


def tag_key(tag: str) -> str:
    """``tag`` as key chunks: a part starting with '@' would be a Zenoh verbatim chunk."""
    return "/".join("%40" + p[1:] if p.startswith("@") else p for p in tag.split("/"))


def key_tag(chunks: list[str]) -> str:
    """Inverse of :func:`tag_key` over its chunks; ValueError if it is not a valid tag."""
    return check_tag("/".join("@" + c[3:] if c.startswith("%40") else c for c in chunks))


def check_name(name: str) -> str:
    """A bridge name: one tag part (it prefixes the tags it exports on importing hosts)."""
    try:
        check_tag(name)
    except (ValueError, TypeError):
        raise UsageError(f"bridge name {name!r}: use one tag part (letters, digits, '_.-:+=')") from None
    if "/" in name or name.startswith("@"):
        raise UsageError(f"bridge name {name!r}: one part, no '/', not starting with '@'")
    return name


def alive_key(bridge: str, zid: str) -> str:
    return f"{ROOT}/{bridge}/alive/{zid}"


def tags_key(bridge: str, tag: str | None = None) -> str:
    return f"{ROOT}/{bridge}/tags/" + ("**" if tag is None else tag_key(tag))


def catalog_key(bridge: str) -> str:
    return f"{ROOT}/{bridge}/catalog"


def credit_key(exporter: str, importer: str, tag: str | None = None) -> str:
    return f"{ROOT}/{exporter}/credit/{importer}/" + ("**" if tag is None else tag_key(tag))


def frame_key(exporter: str, importer: str, tag: str | None = None) -> str:
    return f"{ROOT}/{exporter}/frame/{importer}/" + ("**" if tag is None else tag_key(tag))


def split_key(key: str, what: str, with_peer: bool) -> tuple[str, str, str]:
    """(bridge, peer zid or '', tag) of ``ndsharray/<bridge>/<what>/[<peer>/]<tag>``."""
    chunks = key.split("/")
    n = 4 if with_peer else 3
    if len(chunks) < n + 1 or chunks[0] != ROOT or chunks[2] != what:
        raise ValueError(f"not a {what} key: {key[:120]!r}")
    return chunks[1], chunks[3] if with_peer else "", key_tag(chunks[n:])
