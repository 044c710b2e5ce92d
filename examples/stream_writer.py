"""A camera-like writer: 1280x720 RGB frames at 60 Hz under the tag ``camera/left``.

Run with ``python examples/stream_writer.py`` and read with ``examples/stream_reader.py``.
"""

import time

import numpy as np

import ndsharray

frame = np.zeros((720, 1280, 3), np.uint8)
with ndsharray.NdShArray("camera/left", r_w="w") as cam:
    n = 0
    next_t = time.monotonic()
    try:
        while True:
            n += 1
            frame[...] = n % 256  # stand-in for a real camera image
            cam.write(frame)
            if n % 60 == 0:
                print(f"wrote {n} frames", flush=True)
            next_t += 1 / 60
            time.sleep(max(0.0, next_t - time.monotonic()))
    except KeyboardInterrupt:
        pass
