"""asyncio readers (ndsharray/aio.py): aread() and aframes() without blocking the loop,
one waiter thread for many readers, nothing left behind by a cancelled aread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest
from conftest import sleepers, wait_until

import ndsharray
from ndsharray import aio

LOOPS = ["asyncio", "uvloop"]


def run(loop_kind: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")  # the [aio] extra; CI installs it
        return uvloop.run(main())
    return asyncio.run(main())


@pytest.fixture(autouse=True)
def no_waiter_left() -> Any:
    yield
    wait_until(lambda: aio.threads() == 0, timeout=5 * aio.LINGER + 5, what="the waiter threads to end")
    assert aio.registrations() == 0


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_aread_gets_the_next_frame_without_blocking_the_loop(daemon: Any, puppets: Any, loop_kind: str) -> None:
    p = puppets()
    p.start_writer("cam/a", "uint8", [64], seed=1)
    with ndsharray.NdShArray("cam/a", r_w="r") as r:
        async def main() -> None:
            status, first = await r.aread(timeout=10)
            assert status and first.shape == (64,)
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.005)
                    ticks += 1

            tick = asyncio.create_task(ticker())
            pending = asyncio.create_task(r.aread(timeout=20))
            deadline = asyncio.get_running_loop().time() + 10
            while ticks <= 3 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)  # (a loaded machine may run the ticker late: wait for it)
            assert not pending.done() and ticks > 3  # the loop runs while aread waits
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: p(op="write", name="w", dtype="uint8", shape=[64], seed=2))
            status, arr = await asyncio.wait_for(pending, 10)
            assert status and r.write_count == 2
            status, again = await r.aread(timeout=0.05)
            assert status is False and again is arr  # (False, the last array) at the timeout
            tick.cancel()

        run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_aframes_until_closed_reads_a_finite_stream(daemon: Any, puppets: Any, loop_kind: str) -> None:
    p = puppets()
    p.start_writer("cam/fin", "uint8", [8], seed=0)
    with ndsharray.NdShArray("cam/fin", r_w="r") as r:
        async def main() -> list[int]:
            got = []
            loop = asyncio.get_running_loop()
            async for _ in r.aframes(until_closed=True):
                got.append(r.write_count)
                if len(got) < 4:
                    await loop.run_in_executor(None, lambda: p(op="write", name="w", dtype="uint8",
                                                              shape=[8], seed=len(got)))
                elif len(got) == 4:
                    await loop.run_in_executor(None, lambda: p(op="close", name="w"))
            return got

        assert run(loop_kind, main) == [1, 2, 3, 4]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_many_readers_in_one_loop_share_one_thread(daemon: Any, loop_kind: str) -> None:
    tags = [f"cam/many/{k}" for k in range(40)]
    writers = [ndsharray.NdShArray(t, np.zeros(16, np.uint8), r_w="w") for t in tags]
    readers = [ndsharray.NdShArray(t, r_w="r") for t in tags]
    try:
        async def main() -> None:
            for r in readers:
                assert (await r.aread(timeout=10))[0]
            tasks = [asyncio.create_task(r.aread(timeout=20)) for r in readers]
            wait = asyncio.get_running_loop().time() + 10
            while aio.registrations() < len(readers) and asyncio.get_running_loop().time() < wait:
                await asyncio.sleep(0.005)
            assert aio.registrations() == len(readers)
            assert aio.threads() == 1
            for k, w in enumerate(writers):
                w.write(np.full(16, k, np.uint8))
            results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert [int(a[0]) for _, a in results] == list(range(len(writers)))

        run(loop_kind, main)
    finally:
        for h in readers + writers:
            h.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_cancelling_a_thousand_areads_leaves_nothing(daemon: Any, loop_kind: str) -> None:
    with ndsharray.NdShArray("cam/c", np.zeros(16, np.uint8), r_w="w"), \
            ndsharray.NdShArray("cam/c", r_w="r") as r:
        async def main() -> None:
            assert (await r.aread(timeout=10))[0]
            tasks = [asyncio.create_task(r.aread()) for _ in range(1000)]
            wait = asyncio.get_running_loop().time() + 20
            while aio.registrations() < 1000 and asyncio.get_running_loop().time() < wait:
                await asyncio.sleep(0.01)
            assert aio.registrations() == 1000 and sleepers(r) == 1000
            for t in tasks:
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(d, asyncio.CancelledError) for d in done)
            assert aio.registrations() == 0 and sleepers(r) == 0
            assert r._seg is not None and r._seg.pinned == 1  # the one frame read, nothing more

        run(loop_kind, main)


def test_without_futex_waitv_the_waiter_polls(daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio._pool, "waitv", False)  # as on a kernel before 5.16
    with ndsharray.NdShArray("cam/poll", np.zeros(4, np.uint8), r_w="w") as w, \
            ndsharray.NdShArray("cam/poll", r_w="r") as r:
        async def main() -> None:
            assert (await r.aread(timeout=10))[0]
            pending = asyncio.create_task(r.aread(timeout=20))
            await asyncio.sleep(0.05)
            w.write(np.ones(4, np.uint8))
            status, arr = await asyncio.wait_for(pending, 10)
            assert status and arr[0] == 1

        asyncio.run(main())


def test_aread_returns_when_the_writer_dies(daemon: Any, puppets: Any) -> None:
    p = puppets()
    p.start_writer("cam/die", "uint8", [8], seed=0)
    with ndsharray.NdShArray("cam/die", r_w="r") as r:
        async def main() -> tuple[bool, float]:
            loop = asyncio.get_running_loop()
            assert (await r.aread(timeout=10))[0]
            pending = asyncio.create_task(r.aread(timeout=30))
            await asyncio.sleep(0.05)
            t0 = loop.time()
            await loop.run_in_executor(None, p.kill)
            status, _ = await asyncio.wait_for(pending, 25)
            return status, loop.time() - t0

        status, took = asyncio.run(main())
        assert status is False and took < 10 and r.writer_state == "died"


@pytest.mark.parametrize("how", ["close", "kill"])
def test_every_task_waiting_on_one_handle_returns_when_the_writer_goes(
        daemon: Any, puppets: Any, how: str) -> None:
    p = puppets()
    p.start_writer("cam/tasks", "uint8", [8], seed=0)
    with ndsharray.NdShArray("cam/tasks", r_w="r") as r:
        async def main() -> list[Any]:
            loop = asyncio.get_running_loop()
            assert (await r.aread(timeout=10))[0]

            async def finite() -> list[Any]:
                return [f async for f in r.aframes(until_closed=True, timeout=30)]

            waits: list[Any] = [r.aread(timeout=30), r.aread(timeout=30), r.aread(timeout=30)]
            if how == "close":
                waits.append(finite())
            tasks = [asyncio.create_task(w) for w in waits]
            wait = loop.time() + 10
            while sleepers(r) < len(tasks) and loop.time() < wait:
                await asyncio.sleep(0.005)
            assert sleepers(r) == len(tasks)  # every task registered, asleep
            await loop.run_in_executor(None, lambda: p(op="close", name="w") if how == "close" else p.kill())
            return list(await asyncio.wait_for(asyncio.gather(*tasks), 10))  # not their 30 s

        results = asyncio.run(main())
        assert [status for status, _ in results[:3]] == [False] * 3
        if how == "close":
            assert results[3] == []
