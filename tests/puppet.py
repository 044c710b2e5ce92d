"""A child process driven line by line over stdin/stdout, for cross-process tests.

Each input line is a JSON command; each output line is its JSON answer (``{"ok": ...}`` or
``{"error": type, "message": ...}``). The first line printed is ``{"ready": pid}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arrays import digest, make_array

import ndsharray

handles: dict[str, ndsharray.NdShArray] = {}
held: list[Any] = []


def run(cmd: dict[str, Any]) -> Any:
    op = cmd["op"]
    if op == "open":
        handles[cmd["name"]] = ndsharray.NdShArray(cmd["tag"], r_w=cmd["rw"], **cmd.get("kw", {}))
        return None
    h = handles.get(cmd.get("name", ""))
    if op == "write":
        h.write(make_array(cmd["dtype"], tuple(cmd["shape"]), cmd["seed"]))  # type: ignore[union-attr]
        return h.ndarray_mmap_name  # type: ignore[union-attr]
    if op == "put":  # a frame of given values, broadcast to ``shape`` (a colour per pixel)
        value = np.asarray(cmd["value"], dtype=cmd["dtype"])
        h.write(np.broadcast_to(value, tuple(cmd.get("shape", value.shape))))  # type: ignore[union-attr]
        return h.write_count  # type: ignore[union-attr]
    if op == "read":
        deadline = time.monotonic() + cmd.get("wait", 0)
        while True:
            status, arr = h.read()  # type: ignore[union-attr]
            if status or time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        if cmd.get("hold"):
            held.append(arr)
        return {"status": status, "dtype": repr(np.lib.format.dtype_to_descr(arr.dtype)),
                "shape": list(arr.shape), "digest": digest(arr), "writeable": arr.flags.writeable,
                "segment": h.ndarray_mmap_name}  # type: ignore[union-attr]
    if op == "close":
        handles.pop(cmd["name"]).close()
        return None
    if op == "exit":
        os._exit(cmd.get("code", 0)) if cmd.get("hard") else sys.exit(0)
    raise ValueError(f"unknown op {op}")


def main() -> None:
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "raise":  # end the interpreter with an uncaught exception
            raise RuntimeError("the test told this puppet to fail")
        try:
            out = {"ok": run(cmd)}
        except Exception as exc:
            out = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
