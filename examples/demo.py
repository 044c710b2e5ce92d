"""Demo: a writer process and a reader process share frames through ndsharray.

Runs against a private daemon (started by the first client, stopped at the end), so it
leaves nothing behind: the last lines show /dev/shm holds none of its segments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import ndsharray

WRITER = """
import sys, time, numpy as np, ndsharray
w = ndsharray.NdShArray("demo/camera", r_w="w")
frame = np.zeros((480, 640, 3), np.uint8)
for n in range(1, 301):                      # 300 frames at about 100 Hz
    frame[...] = n % 256
    w.write(frame)
    if n == 1:
        print("writer: first frame published", flush=True)
        sys.stdin.readline()                 # wait until the reader is attached
    time.sleep(0.01)
print("writer: wrote 300 frames", flush=True)
sys.stdin.readline()                         # keep the tag alive until the reader is done
"""

READER = """
import time, numpy as np, ndsharray
r = ndsharray.NdShArray("demo/camera", r_w="r")
print("reader: attached", flush=True)
got, lat, last_new = 0, [], time.monotonic() + 10
while got < 300 and time.monotonic() - last_new < 0.5:   # stop once frames stop coming
    status, frame = r.read()
    if status:
        assert (frame == frame.flat[0]).all(), "torn frame"
        got, last, last_new = got + 1, frame, time.monotonic()
        lat.append(r.read_time_ms)
    else:
        time.sleep(0.0005)
print(f"reader: received {got} frames, last {last.dtype} {last.shape} value {last.flat[0]}, "
      f"write-to-read median {sorted(lat)[len(lat) // 2]:.3f} ms, view writeable={last.flags.writeable}")
r.close()
"""


def main() -> None:
    folder = tempfile.mkdtemp(prefix="ndsdemo", dir="/tmp")
    endpoint = f"ipc://{folder}/d.sock"
    env = {**os.environ, "NDSHARRAY_ENDPOINT": endpoint}
    writer = subprocess.Popen([sys.executable, "-c", WRITER], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdout and writer.stdin
    print(writer.stdout.readline().strip())
    reader = subprocess.Popen([sys.executable, "-c", READER], env=env, text=True,
                              stdout=subprocess.PIPE)
    assert reader.stdout
    print(reader.stdout.readline().strip())
    writer.stdin.write("go\n")
    writer.stdin.flush()
    print(reader.stdout.read().strip())
    print(writer.stdout.readline().strip())
    print("\n$ ndsharray ls")
    subprocess.run([sys.executable, "-m", "ndsharray", "ls"], env=env, check=True)
    writer.stdin.close()
    writer.wait()
    reader.wait()
    pid = ndsharray.admin.stop_daemon(endpoint)
    # Only this endpoint's segments: other daemons on the machine are not ours to count.
    prefix = ndsharray.config.segment_prefix(endpoint)
    left = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    print(f"\nstopped the demo's daemon (pid {pid}); our segments left in /dev/shm: {left or 'none'}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
