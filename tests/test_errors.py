"""Bad arguments get the right exception with a message that says what to do."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest

import ndsharray


@pytest.mark.parametrize("r_w", [None, "", "rw", "x", 1])
def test_r_w_must_be_r_or_w(r_w: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("NDSHARRAY_AUTOSTART", "0")
    with pytest.raises(ValueError, match="r_w must be 'r'"):
        ndsharray.NdShArray("t", r_w=r_w)


@pytest.mark.parametrize("tag", ["", "/abs", "a//b", "trail/", "sp ace", "nul\0", "x" * 201, "../etc"])
def test_bad_tags_are_refused_before_any_daemon_call(tag: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("NDSHARRAY_AUTOSTART", "0")
    monkeypatch.setenv("NDSHARRAY_ENDPOINT", "ipc:///nonexistent/d.sock")
    with pytest.raises(ValueError, match="tag"):
        ndsharray.NdShArray(tag, r_w="r")


def test_tag_must_be_str() -> None:
    with pytest.raises(TypeError, match="tag must be a str"):
        ndsharray.NdShArray(b"bytes", r_w="r")  # type: ignore[arg-type]


def test_object_and_string_dtypes_are_refused_with_the_reason(daemon: Any) -> None:
    with ndsharray.NdShArray("obj", r_w="w") as w:
        with pytest.raises(TypeError, match="Python objects"):
            w.write(np.array([object(), 1], dtype=object))
        with pytest.raises(TypeError, match="Python objects"):
            w.write(np.zeros(2, dtype=[("a", "f4"), ("b", "O")]))
        with pytest.raises(TypeError, match="not a fixed-size dtype"):
            w.write(np.array(["a", "bc"], dtype=np.dtypes.StringDType()))
        assert w.ndarray_mmap_name is None  # nothing was created for them


def test_wrong_direction_and_closed_handles(daemon: Any) -> None:
    w = ndsharray.NdShArray("dir", np.zeros(2), "w")
    r = ndsharray.NdShArray("dir", r_w="r")
    with pytest.raises(ndsharray.NdShArrayError, match="needs r_w='r'"):
        w.read()
    with pytest.raises(ndsharray.NdShArrayError, match="needs r_w='w'"):
        r.write(np.zeros(2))
    with pytest.raises(ValueError, match="only for writers"):
        ndsharray.NdShArray("dir", np.zeros(2), "r")
    w.close()
    w.close()  # idempotent
    r.close()
    with pytest.raises(ndsharray.HandleClosedError):
        w.write(np.zeros(2))
    with pytest.raises(ndsharray.HandleClosedError):
        r.read()
    assert "closed" in repr(w)


def test_supported_types_cover_the_original_fourteen() -> None:
    original = {np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                np.float16, np.float32, np.float64, np.complex64, np.complex128, np.bool_}
    assert original <= set(ndsharray.supported_types)
    assert {np.datetime64, np.timedelta64, np.bytes_, np.str_, np.void} <= set(ndsharray.supported_types)


def test_exported_names_are_the_public_ones() -> None:
    public = {n for n, v in vars(ndsharray).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert set(ndsharray.__all__) - {"__version__"} == public
