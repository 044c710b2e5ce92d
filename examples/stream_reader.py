"""Reads ``camera/left`` (see stream_writer.py) with blocking reads; prints rate and latency.

The loop sleeps on a futex between frames, so it uses no CPU while waiting.
"""

import time

import ndsharray

with ndsharray.NdShArray("camera/left", r_w="r") as cam:
    got, t0, lat = 0, time.monotonic(), []
    try:
        for frame in cam:  # blocks until each new frame; a zero-copy, read-only view
            got += 1
            lat.append(cam.read_time_ms)
            if time.monotonic() - t0 >= 1.0:
                lat.sort()
                print(f"{got} frames/s, {frame.shape} {frame.dtype}, write-to-read latency "
                      f"median {lat[len(lat) // 2]:.3f} ms, max {lat[-1]:.3f} ms", flush=True)
                got, t0, lat = 0, time.monotonic(), []
    except KeyboardInterrupt:
        pass
