"""Shape and dtype change while a reader (another process) is attached: it just follows."""

import subprocess
import sys

import numpy as np

import ndsharray

READER = """
import ndsharray
r = ndsharray.NdShArray("demo/shapes", r_w="r")
print("attached", flush=True)
while input() == "read":
    status, a = r.read(timeout=10)
    print(f"  reader got: {status} {a.dtype} {a.shape} first={a.flat[0]} from {r.ndarray_mmap_name}", flush=True)
"""

with ndsharray.NdShArray("demo/shapes", r_w="w") as w:
    reader = subprocess.Popen([sys.executable, "-c", READER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdin is not None and reader.stdout is not None
    reader.stdout.readline()
    for a in (np.zeros((2, 3)), np.ones((640, 480), np.uint16), np.full(5, 7, np.int8),
              np.array([(1, 2.5)], dtype=[("id", "i4"), ("x", "f8")])):
        w.write(a)
        print(f"writer wrote {a.dtype} {a.shape} into {w.ndarray_mmap_name}", flush=True)
        reader.stdin.write("read\n")
        reader.stdin.flush()
        print(reader.stdout.readline().rstrip(), flush=True)
    reader.stdin.write("stop\n")
    reader.stdin.close()
    reader.wait()
