"""The segment header, without a daemon: parsing names every corrupt field, and a shape
numpy cannot index is refused by the parser, the handles and the C reader alike.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from conftest import segment_bytes_of
from hypothesis import given, settings
from hypothesis import strategies as st

from ndsharray import _hot
from ndsharray.errors import CorruptSegmentError
from ndsharray.framecopy import ENV_SKEW_FROM
from ndsharray.layout import HEADER_OFF, PAGED_SLOT, SLOT_SKEW
from ndsharray.segment.files import shm_dir
from ndsharray.segment.header import create_segment, parse_header
from ndsharray.segment.reader import SegmentReader
from ndsharray.segment.writer import SegmentWriter


@pytest.fixture
def segment_bytes() -> bytes:
    return bytes(segment_bytes_of("'<u2'", (4, 5), 3)[1])


def test_header_parses(segment_bytes: bytes) -> None:
    h = parse_header(segment_bytes, len(segment_bytes))
    assert (h.tag, h.shape, h.dtype, h.layout.nslots) == ("cam", (4, 5), np.dtype("<u2"), 3)


@pytest.mark.parametrize("offset, fmt, value, field", [
    (0, "8s", b"NOTOURS\0", "magic"),
    (8, "I", 7, "version"),
    (12, "I", 4096 * 9, "header size"),
    (16, "Q", 2**62, "stride"),
    (32, "I", 0, "slot count"),
    (32, "I", 100000, "slot count"),
    (36, "I", 65, "ndim"),
    (82, "H", 0, "dtype length"),
    (HEADER_OFF["data_offset"], "I", 4096 * 5 + 64, "data offset"),
])
def test_corrupt_header_fields_are_named(segment_bytes: bytes, offset: int, fmt: str,
                                         value: object, field: str) -> None:
    buf = bytearray(segment_bytes)
    struct.pack_into("<" + fmt, buf, offset, value)
    with pytest.raises(CorruptSegmentError, match=field):
        parse_header(buf, len(buf))


def test_a_dimension_no_array_can_have_is_corrupt_even_in_a_zero_size_shape() -> None:
    _, buf = segment_bytes_of("'<u2'", (0, 5), 3)
    h = parse_header(buf, len(buf))
    struct.pack_into("<Q", buf, h.layout.shape_offset + 8, 2**63)  # 0 x 2**63 is still 0 bytes
    with pytest.raises(CorruptSegmentError, match="shape"):
        parse_header(buf, len(buf))


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_any_single_corrupt_header_byte_is_caught_or_harmless(pos: int, byte: int) -> None:
    if not hasattr(test_any_single_corrupt_header_byte_is_caught_or_harmless, "raw"):
        raw = segment_bytes_of("'<u2'", (4, 5), 3)[1]
        test_any_single_corrupt_header_byte_is_caught_or_harmless.raw = raw  # type: ignore[attr-defined]
    buf = bytearray(test_any_single_corrupt_header_byte_is_caught_or_harmless.raw)  # type: ignore[attr-defined]
    buf[pos] = byte
    try:
        h = parse_header(buf, len(buf))
    except CorruptSegmentError:
        return
    # Accepted: then everything it promises must fit in the real bytes.
    assert h.layout.total_size <= len(buf)
    assert int(np.prod(h.shape)) * h.dtype.itemsize <= h.layout.nbytes  # (layout 3: a capacity)



def _skewed_segment() -> bytearray:
    """The bytes of a real segment whose slots are skewed (layout 4: data SLOT_SKEW into a page)."""
    raw = getattr(_skewed_segment, "raw", None)
    if raw is None:
        old = os.environ.get(ENV_SKEW_FROM)
        os.environ[ENV_SKEW_FROM] = str(PAGED_SLOT)  # (plan_layout reads it; hypothesis runs no fixture per example)
        try:
            lay, raw = segment_bytes_of("'|u1'", (PAGED_SLOT,), 2)
        finally:
            if old is None:
                del os.environ[ENV_SKEW_FROM]
            else:
                os.environ[ENV_SKEW_FROM] = old
        assert lay.skew == SLOT_SKEW
        _skewed_segment.raw = raw  # type: ignore[attr-defined]
    return bytearray(raw)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 127), st.integers(0, 255), st.integers(0, SLOT_SKEW + 64))
def test_a_skewed_segment_with_a_corrupt_header_byte_or_a_short_file_is_caught_or_harmless(
        pos: int, byte: int, short: int) -> None:
    buf = _skewed_segment()
    buf[pos] = byte
    size = len(buf) - short  # (a file shorter than its layout: the last slot's skew must count)
    try:
        h = parse_header(buf, size)
    except CorruptSegmentError:
        return
    lay = h.layout
    assert lay.data_offset % 64 == 0 and lay.stride % 64 == 0 and lay.data_offset >= lay.header_size
    assert lay.slot_offset(lay.nslots - 1) + lay.nbytes + lay.meta_capacity <= lay.total_size <= size


def _header_of(shape: tuple[int, ...], dtype_text: str) -> bytearray:
    """The bytes of a real segment made for ``shape`` (create_segment checks nothing)."""
    return segment_bytes_of(dtype_text, shape, 2)[1]


def _numpy_takes(shape: tuple[int, ...], dtype: str) -> bool:
    try:
        np.ndarray(shape, dtype, buffer=b"")
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("shape, dtype, ok", [
    ((2**61, 2**61, 0), "|u1", False),  # review defect 6: the product is 0, the dims overflow
    ((2**32, 2**31, 0), "|u1", False),  # 2**63 bytes: one past what npy_intp holds
    ((2**32, 2**31 - 1, 0), "|u1", True),
    ((2**60, 0), "<f8", False),  # the item size counts: 2**63 bytes
    ((2**59, 0), "<f8", True),
    ((3, 2**62 - 1, 0), "|u1", False),
    ((0, 2**62 - 1), "<u2", True),
])
def test_a_zero_size_shape_hiding_an_overflow_is_corrupt(shape: tuple[int, ...], dtype: str, ok: bool) -> None:
    assert _numpy_takes(shape, dtype) == ok  # what numpy itself can index
    buf = _header_of(shape, f"'{dtype}'")
    if ok:
        assert parse_header(buf, len(buf)).shape == shape
    else:
        with pytest.raises(CorruptSegmentError, match="more than numpy can index"):
            parse_header(buf, len(buf))


def test_readers_and_writers_refuse_a_hostile_shape_with_corrupt_segment_error() -> None:
    name = f"nds-{os.getuid()}-{'e' * 10}-{os.getpid():016x}"  # (handles open only daemon-made names)
    create_segment(name, tag="x", dtype_text="'|u1'", shape=(2**61, 2**61, 0), nslots=3,
                   generation=1, writer_pid=os.getpid())
    try:
        for opener in (SegmentReader, SegmentWriter):
            with pytest.raises(CorruptSegmentError, match="shape"):
                opener(name)
    finally:
        os.unlink(os.path.join(shm_dir(), name))


@pytest.mark.parametrize("shape", [(2**61, 2**61, 0), (2**62, 2**62, 2**62, 0), (2**32, 2**31, 0), (-1, 0)])
def test_the_c_reader_refuses_shapes_that_overflow_instead_of_multiplying_them(shape: tuple[int, ...]) -> None:
    # Nothing is read at these addresses: the shape is refused first.
    with pytest.raises(ValueError, match="numpy can index"):
        _hot.Reader(base=4096, row=0, nslots=2, data_offset=4096, stride=64, nbytes=0, keep=None,
                    shape=shape, dtype=np.dtype("u1"))
    _hot.Reader(base=4096, row=0, nslots=2, data_offset=4096, stride=64, nbytes=0, keep=None,
                shape=(2**32, 2**31 - 1, 0), dtype=np.dtype("u1"))  # numpy takes this one


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 2**62 - 1), st.integers(0, 64), st.sampled_from([2**31, 2**32, 2**61])),
                min_size=1, max_size=4),
       st.sampled_from(["|u1", "<u2", "<f8", "<c16", "|S3"]))
def test_parse_header_takes_a_zero_size_shape_exactly_when_numpy_can_index_it(
        dims: list[int], dtype: str) -> None:
    shape = (*dims, 0)
    buf = _header_of(shape, f"'{dtype}'")
    try:
        parse_header(buf, len(buf))
        accepted = True
    except CorruptSegmentError:
        accepted = False
    assert accepted == _numpy_takes(shape, dtype)
