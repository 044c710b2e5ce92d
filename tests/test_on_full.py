"""What a write does when readers pin every slot: on_full="grow" (the default), "drop" (skip
the frame, return False, count it for ls) or "block" (wait for a free slot)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import ndsharray
from ndsharray import cli
from ndsharray.errors import WriterStalledError


def hoard(reader: Any, w: ndsharray.NdShArray, frame: np.ndarray[Any, Any], slots: int) -> None:
    """Write ``slots`` frames, each read and kept by the puppet ``reader``: every slot pinned."""
    for k in range(slots):
        assert w.write(frame + k) is True
        out = reader(op="read", name="r", wait=10, hold=True)
        assert out["status"]


def ls_json(tag: str) -> dict[str, Any]:
    res = CliRunner().invoke(cli.main, ["ls", "--json"])
    assert res.exit_code == 0, res.output
    return next(t for t in json.loads(res.output) if t["tag"] == tag)


def test_drop_never_raises_and_ls_counts_the_drops(daemon: Any, puppets: Any) -> None:
    frame = np.zeros((120, 160), np.uint8)
    with ndsharray.NdShArray("cam/drop", r_w="w", slots=3, on_full="drop") as w:
        reader = puppets()
        reader(op="open", name="r", tag="cam/drop", rw="r")
        hoard(reader, w, frame, 3)
        results = []
        t0 = time.monotonic()
        for k in range(50):
            results.append(w.write(frame + k))  # must not raise
        took = time.monotonic() - t0
        assert results == [False] * 50
        assert took < 25  # each drop waits a short grace (ms), never write_timeout (2 s) each
        assert ls_json("cam/drop")["dropped"] == 50
        info = CliRunner().invoke(cli.main, ["info", "cam/drop"])
        assert "dropped" in info.output and "50" in info.output
        assert w.shape == (120, 160) and ls_json("cam/drop")["slots"] == 3  # no growth
        reader.kill()  # its pins go with it: the writer reclaims them
        assert w.write(frame) is True
        assert ls_json("cam/drop")["dropped"] == 50


def test_drop_carries_its_count_to_the_next_generation(daemon: Any, puppets: Any) -> None:
    frame = np.zeros(1000, np.uint8)
    with ndsharray.NdShArray("cam/drop2", r_w="w", slots=2, on_full="drop") as w:
        reader = puppets()
        reader(op="open", name="r", tag="cam/drop2", rw="r")
        hoard(reader, w, frame, 2)
        assert w.write(frame) is False
        assert w.write(np.zeros(2000, np.uint8)) is True  # a new shape: a new generation
        assert ls_json("cam/drop2")["dropped"] == 1


@pytest.mark.parametrize("freed", [False, True])
def test_block_waits_for_a_slot_and_never_grows(daemon: Any, puppets: Any, freed: bool) -> None:
    frame = np.zeros(4096, np.uint8)
    timeout = 10.0 if freed else 0.5
    with ndsharray.NdShArray("cam/block", r_w="w", slots=2, on_full="block", write_timeout=timeout) as w:
        reader = puppets()
        reader(op="open", name="r", tag="cam/block", rw="r")
        hoard(reader, w, frame, 2)
        gen = w.generation
        t0 = time.monotonic()
        if not freed:
            with pytest.raises(WriterStalledError):
                w.write(frame)
            assert time.monotonic() - t0 >= 0.5
        else:  # a slot freed while it waits: the write goes through
            killer = threading.Timer(0.2, reader.kill)
            killer.start()
            assert w.write(frame) is True
            killer.join()
        assert w.generation == gen


def test_grow_is_the_default_and_on_full_is_checked(daemon: Any) -> None:
    with pytest.raises(ValueError, match="on_full"):
        ndsharray.NdShArray("cam/x", r_w="w", on_full="skip")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="on_full"):
        ndsharray.NdShArray("cam/x", r_w="r", on_full="drop")
    with ndsharray.NdShArray("cam/x", r_w="w") as w:
        assert w.on_full == "grow"
        assert w.write(np.zeros(3)) is True
