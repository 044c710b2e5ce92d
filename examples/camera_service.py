"""An asyncio service that reads two camera tags and logs their frame rates.

    python examples/stream_writer.py &          # camera/left at 60 Hz
    python examples/camera_service.py           # add camera/right with a second writer

Both readers wait in one event loop (one waiter thread serves them, however many tags);
each logs its rate once a second, and says so when its writer closes (end of stream) or
dies, then waits for the next writer. Runs under uvloop when it is installed
(``pip install ndsharray[aio]``).
"""

import asyncio
import logging
import time

import ndsharray

log = logging.getLogger("camera_service")


async def watch(tag: str) -> None:
    with ndsharray.NdShArray(tag, r_w="r") as cam:
        frames, t0, state = 0, time.monotonic(), "none"
        while True:
            status, frame = await cam.aread(timeout=1.0)  # returns early when the writer goes
            if status:
                frames += 1
            if cam.writer_state != state:
                state = cam.writer_state
                log.info("%s: writer %d is %s", tag, cam.writer_pid, state)
            if time.monotonic() - t0 >= 1.0:
                log.info("%s: %.1f frames/s %s, writer %s", tag, frames / (time.monotonic() - t0),
                         frame.shape, cam.writer_state)
                frames, t0 = 0, time.monotonic()


async def main() -> None:
    await asyncio.gather(watch("camera/left"), watch("camera/right"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(main())
    except KeyboardInterrupt:
        pass
