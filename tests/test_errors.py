"""Bad arguments get the right exception with a message that says what to do."""

from __future__ import annotations

import logging
import types
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, wait_until

import ndsharray
from ndsharray import admin


@pytest.mark.parametrize("r_w", [None, "", "rw", "x", 1])
def test_r_w_must_be_r_or_w(r_w: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("NDSHARRAY_AUTOSTART", "0")
    with pytest.raises(ValueError, match="r_w must be 'r'") as err:
        ndsharray.NdShArray("t", r_w=r_w)
    assert "did you mean" not in str(err.value)


@pytest.mark.parametrize("mode", ["r", "w", "R", "W"])
def test_r_or_w_given_as_the_array_asks_whether_r_w_was_meant(mode: str, monkeypatch: Any) -> None:
    # NdShArray('camera/left', 'r'): the second positional argument is array=.
    monkeypatch.setenv("NDSHARRAY_AUTOSTART", "0")
    with pytest.raises(ValueError, match=f"did you mean r_w='{mode}'\\?") as err:
        ndsharray.NdShArray("camera/left", mode)  # type: ignore[call-overload]
    assert f"NdShArray('camera/left', r_w='{mode}')" in str(err.value)


@pytest.mark.parametrize("tag", ["", "/abs", "a//b", "trail/", "sp ace", "nul\0", "x" * 201, "../etc"])
def test_bad_tags_are_refused_before_any_daemon_call(tag: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("NDSHARRAY_AUTOSTART", "0")
    monkeypatch.setenv("NDSHARRAY_ENDPOINT", "ipc:///nonexistent/d.sock")
    with pytest.raises(ValueError, match="tag"):
        ndsharray.NdShArray(tag, r_w="r")


def test_tag_must_be_str() -> None:
    with pytest.raises(TypeError, match="tag must be a str"):
        ndsharray.NdShArray(b"bytes", r_w="r")  # type: ignore[call-overload]


def test_object_and_string_dtypes_are_refused_with_the_reason(daemon: Any) -> None:
    with ndsharray.NdShArray("obj", r_w="w") as w:
        with pytest.raises(TypeError, match="Python objects"):
            w.write(np.array([object(), 1], dtype=object))
        with pytest.raises(TypeError, match="Python objects"):
            w.write(np.zeros(2, dtype=[("a", "f4"), ("b", "O")]))
        with pytest.raises(TypeError, match="not a fixed-size dtype"):
            w.write(np.array(["a", "bc"], dtype=np.dtypes.StringDType()))
        with pytest.raises(NotImplementedError):  # what ndsharray 1.x raised for them
            w.write(np.array([object()]))
        with pytest.raises(ndsharray.UnsupportedDtypeError):
            w.write(np.array([object()]))
        assert w.ndarray_mmap_name is None  # nothing was created for them


def test_only_numpy_arrays_are_written(daemon: Any) -> None:
    # As in ndsharray 1.x: no guessing a dtype for a list, a str or None (a buffer such as a
    # memoryview is viewed as it is: see test_foreign.py).
    with ndsharray.NdShArray("kinds", np.zeros(3), "w") as w:  # (its fast path is ready)
        for not_an_array in (None, [1.0, 2.0, 3.0], "abc", b"abc"):
            with pytest.raises(TypeError, match="takes a numpy array or an object numpy can view"):
                w.write(not_an_array)
        with pytest.raises(TypeError, match="drop its mask"):
            w.write(np.ma.masked_array(np.zeros(3), mask=[False, True, False]))
        w.write(np.arange(3.0).view(np.matrix).A1.view(np.matrix))  # subclasses are arrays
        assert w.shape == (1, 3)
    with pytest.raises(TypeError, match=r"NdShArray\(array=...\) takes a numpy array .*, got list"):
        ndsharray.NdShArray("kinds2", [1, 2], "w")  # type: ignore[call-overload]


def test_wrong_direction_and_closed_handles(daemon: Any) -> None:
    w = ndsharray.NdShArray("dir", np.zeros(2), "w")
    r = ndsharray.NdShArray("dir", r_w="r")
    with pytest.raises(ndsharray.NdShArrayError, match="needs r_w='r'"):
        w.read()
    with pytest.raises(ndsharray.NdShArrayError, match="needs r_w='w'"):
        r.write(np.zeros(2))
    with pytest.raises(ndsharray.NdShArrayError, match=r"loan\(\) needs r_w='w'"):
        with r.loan():
            pass
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


def test_supported_types_iterates_as_the_original_fourteen() -> None:
    # ndsharray 1.1.4's list, in its order (its last entry was Python's bool).
    original = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                np.float16, np.float32, np.float64, np.complex64, np.complex128, bool]
    assert list(ndsharray.supported_types) == original and len(ndsharray.supported_types) == 14
    assert [t.__name__ for t in ndsharray.supported_types][-1] == "bool"
    # 1.1.4's test idiom makes only arrays of these 14 (at most 16 bytes an item).
    shape = (4, 3)
    for t in ndsharray.supported_types:
        assert (np.random.random(shape) * 255).astype(t).itemsize <= 16
    # 1.x's idiom `a.dtype in supported_types` holds for every dtype we share.
    for shared in ("M8[ns]", "m8[s]", "S4", "U3", "V8", ">i4", [("x", "f4"), ("n", "u1", (2,))], bool,
                   np.bool_, np.longdouble, "G"):
        assert np.dtype(shared) in ndsharray.supported_types and shared in ndsharray.supported_types
        assert ndsharray.shareable(shared) and ndsharray.shareable(np.dtype(shared))
    for refused in (object, np.dtype("O"), "not a dtype", [("a", "O")], None, [1, 2], "U0"):
        assert refused not in ndsharray.supported_types
        assert ndsharray.shareable(refused) is False
    for array in (np.zeros(2, "U3"), np.zeros(2, "S4"), np.zeros(2, "V8"), np.zeros(2, "M8[s]")):
        assert array.dtype.type in ndsharray.supported_types  # the scalar types themselves
        assert ndsharray.shareable(array.dtype.type) and ndsharray.shareable(array.dtype)



def test_exported_names_are_the_public_ones() -> None:
    public = {n for n, v in vars(ndsharray).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert set(ndsharray.__all__) - {"__version__"} == public


def test_a_reader_of_a_tag_nobody_writes_says_so_once(daemon: Any, monkeypatch: Any, caplog: Any) -> None:
    # A misspelt tag would otherwise wait forever in silence.
    monkeypatch.setattr(ndsharray.finder, "MISSING_WARN_AFTER", 0.05)

    def said() -> list[str]:
        return [m for m in caplog.messages if "no writer has published" in m]

    with ndsharray.NdShArray("camera/left", np.zeros(2), "w"), \
            ndsharray.NdShArray("camera/lfet", r_w="r") as r, caplog.at_level(logging.WARNING, "ndsharray"):
        wait_until(lambda: r.read(timeout=0.1)[0] is False and said(), what="the warning")
        assert r.read(timeout=0.2)[0] is False
    assert len(said()) == 1 and "'camera/lfet'" in said()[0] and "similar tags with data: 'camera/left'" in said()[0]


def test_absurd_shapes_get_a_clear_error(daemon: Daemon) -> None:
    with ndsharray.NdShArray("huge2", r_w="w") as w:
        with pytest.raises(ndsharray.ResourceLimitError, match="check the shape"):
            with w.loan(shape=(2**40, 2**20), dtype=np.float64):
                pass


def test_writer_of_a_removed_tag_gets_tag_removed_even_on_a_shape_change(daemon: Daemon) -> None:
    with ndsharray.NdShArray("gone2", np.zeros(3), "w") as w:
        admin.remove_tag("gone2")
        with pytest.raises(ndsharray.TagRemovedError):
            w.write(np.zeros((5, 5)))


def test_a_nan_or_negative_timeout_is_refused(daemon: Daemon) -> None:
    with ndsharray.NdShArray("nan", np.zeros(2), "w") as w, ndsharray.NdShArray("nan", r_w="r") as r:
        with pytest.raises(ValueError, match="NaN"):
            r.read(timeout=float("nan"))
        with pytest.raises(ValueError, match="NaN"):
            r.wait(float("nan"))
        negatives: tuple[Any, ...] = (-1, -1.0, -0.001, np.float32(-2), -float("inf"))
        for negative in negatives:
            with pytest.raises(ValueError, match="timeout is negative"):
                r.read(timeout=negative)
            with pytest.raises(ValueError, match="timeout is negative"):
                r.wait(negative)
        assert r.read(timeout=0)[0] and r.read(timeout=0.0)[0] is False and r.wait(0) is False
        w.write(np.ones(2))  # a new frame on the segment this reader checked (its one-call path)
        with pytest.raises(ValueError, match="NaN"):
            r.read(timeout=float("nan"))
        not_seconds: list[Any] = ["soon", "1", True, "", []]  # "1", True passed for 1 s; "" waited forever
        for bad in not_seconds:
            with pytest.raises(TypeError, match="number of seconds"):
                r.read(timeout=bad)
        with pytest.raises(ValueError, match="timeout is negative"):
            r.read(timeout=-1.0)  # (the one-call path's pre-check sends it to the check too)
        assert r.read(timeout=0.0)[1].tolist() == [1.0, 1.0]
