"""Reads ``camera/left`` (see stream_writer.py) and prints rate and write-to-read latency."""

import time

import ndsharray

with ndsharray.NdShArray("camera/left", r_w="r") as cam:
    got, t0, lat = 0, time.monotonic(), []
    try:
        while True:
            status, frame = cam.read()  # a zero-copy, read-only view
            if not status:
                time.sleep(0.0005)
                continue
            got += 1
            lat.append(cam.read_time_ms)
            if time.monotonic() - t0 >= 1.0:
                lat.sort()
                print(f"{got} frames/s, {frame.shape} {frame.dtype}, latency median "
                      f"{lat[len(lat) // 2]:.3f} ms", flush=True)
                got, t0, lat = 0, time.monotonic(), []
    except KeyboardInterrupt:
        pass
