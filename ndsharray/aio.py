"""asyncio for readers: ``await reader.aread()`` and ``async for frame in reader.aframes()``.

A blocked reader sleeps on its segment's notify word (a futex). An event loop must not
sleep, so a waiter thread sleeps for it: the coroutine registers (word, value it saw) with
a future, the thread wakes when the word moves and resolves the future through
``loop.call_soon_threadsafe``, and the coroutine reads as the blocking call would.

One thread serves up to 127 distinct words (``futex_waitv``, Linux 5.16+: one syscall
sleeps on up to 128 words, one of them the thread's own kick word), so many readers in one
loop, or in many loops, cost one thread, not one each; a second thread starts only past
127 segments. A thread with nothing to watch for :data:`LINGER` seconds ends (a camera
reader that awaits every frame keeps it; a program that stops reading leaves no thread).
Where the kernel has no ``futex_waitv`` the thread polls the words every
:data:`POLL_INTERVAL` seconds instead.

Cancelling an ``aread`` (a timeout, a task cancelled) leaves nothing behind: the
registration is removed and the row's may-sleep count given back in ``finally`` blocks,
and nothing is pinned until a frame is actually read (a plain non-blocking ``read()``,
which pins and returns it in one step). Works with any asyncio loop (uvloop too): it only
uses ``call_soon_threadsafe``, ``call_later`` and futures.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import _waitv, process
from .errors import DaemonUnavailableError, HandleClosedError
from .liveness import EndSeen
from .segment.reader import SegmentReader

LINGER = 1.0  # seconds an idle waiter thread waits for new work before it ends
POLL_INTERVAL = 0.002  # without futex_waitv: how often the words are looked at
SLICE = 1.0  # a registration is looked at again at least this often (a daemon that is down
# cannot wake a reader whose writer died; the coroutine then finds it out itself)
WORDS = _waitv.MAX_WORDS - 1  # segments per thread: one word is the thread's kick word


class AsyncReadable(Protocol):
    """What the reader handle gives aio.py (see the reader module)."""

    def read(self, copy: bool = False, timeout: float | None = 0.0) -> tuple[bool, np.ndarray[Any, Any]]: ...

    def _sleep_target(self) -> SegmentReader | None: ...

    def _sleep_count(self) -> int: ...

    def _new_end(self, seg: SegmentReader, seen: EndSeen) -> bool: ...

    def _since_now(self) -> EndSeen: ...

    def _restarting(self, exc: DaemonUnavailableError) -> bool: ...

    def _rest(self, copy: bool) -> Iterator[np.ndarray[Any, Any]]: ...

    def _last_array(self) -> np.ndarray[Any, Any]: ...

    @property
    def writer_state(self) -> str: ...


@dataclass(eq=False)
class _Reg:
    seg: SegmentReader  # holds the mapping (the word's memory) while registered
    addr: int
    value: int
    fut: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    waiter: _Waiter | None = field(default=None)


def _fire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Waiter(threading.Thread):
    """Sleeps on up to WORDS notify words for registered coroutines."""

    def __init__(self, pool: _Pool) -> None:
        super().__init__(name="ndsharray-aio", daemon=True)
        self.pool = pool
        self.kick_word = ctypes.c_uint32(0)
        self.kick_addr = ctypes.addressof(self.kick_word)
        self.regs: dict[int, list[_Reg]] = {}  # address -> registrations (under pool.lock)

    def kick(self) -> None:
        _waitv.kick(self.kick_addr)

    def run(self) -> None:
        idle_since: float | None = None
        while True:
            kick_value = _waitv.load(self.kick_addr)
            with self.pool.lock:
                self._fire_moved()
                if not self.regs:
                    now = time.monotonic()
                    idle_since = idle_since or now
                    if now - idle_since >= LINGER:
                        self.pool.waiters.remove(self)
                        return
                else:
                    idle_since = None
                addrs = [self.kick_addr] + list(self.regs)
                values = [kick_value] + [regs[0].value for regs in self.regs.values()]
                keep = list(self.regs.values())  # the mappings stay alive while we sleep on them
            timeout = LINGER if len(addrs) == 1 else SLICE
            if self.pool.waitv:
                try:
                    _waitv.waitv(addrs, values, timeout)
                except OSError as exc:
                    if exc.errno != errno.ENOSYS:
                        raise
                    self.pool.waitv = False  # an old kernel: poll from now on
            else:
                _waitv.wait1(self.kick_addr, kick_value, POLL_INTERVAL if len(addrs) > 1 else timeout)
            del keep

    def _fire_moved(self) -> None:
        """Resolve every registration whose word no longer holds the value it saw."""
        for addr in list(self.regs):
            now = _waitv.load(addr)
            regs = self.regs[addr]
            stay = [r for r in regs if r.value == now]
            for r in regs:
                if r.value != now:
                    try:
                        r.loop.call_soon_threadsafe(_fire, r.fut)
                    except RuntimeError:
                        pass  # its loop was closed
                    r.waiter = None
            if stay:
                self.regs[addr] = stay
            else:
                del self.regs[addr]


class _Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: list[_Waiter] = []
        self.waitv = True

    def register(self, reg: _Reg) -> None:
        with self.lock:
            w = next((w for w in self.waiters if reg.addr in w.regs), None)
            if w is None:
                w = next((w for w in self.waiters if len(w.regs) < WORDS), None)
            start = w is None
            if w is None:
                w = _Waiter(self)
                self.waiters.append(w)
            w.regs.setdefault(reg.addr, []).append(reg)
            reg.waiter = w
        if start:
            w.start()
        else:
            w.kick()

    def unregister(self, reg: _Reg) -> None:
        with self.lock:
            w, reg.waiter = reg.waiter, None
            if w is None:
                return  # fired (and dropped) by its thread already
            regs = w.regs.get(reg.addr, [])
            if reg in regs:
                regs.remove(reg)
                if not regs:
                    del w.regs[reg.addr]
        w.kick()  # so it stops sleeping on a word nobody waits for

    def wake(self, seg: SegmentReader) -> None:
        """Resolve every registration on ``seg`` (its reader closes)."""
        with self.lock:
            for w in self.waiters:
                for regs in w.regs.values():
                    for r in regs:
                        if r.seg is seg:
                            try:
                                r.loop.call_soon_threadsafe(_fire, r.fut)
                            except RuntimeError:
                                pass  # its loop was closed

    def threads(self) -> int:
        with self.lock:
            return len(self.waiters)

    def registrations(self) -> int:
        with self.lock:
            return sum(len(v) for w in self.waiters for v in w.regs.values())


_pool = _Pool()


def _after_fork() -> None:
    global _pool
    _pool = _Pool()  # the parent's threads do not exist in a child


process.on_fork("aio", _after_fork)


def wake(seg: SegmentReader) -> None:
    """End the aread() calls waiting on ``seg`` (its reader closes): they look again, and
    find the handle closed."""
    _pool.wake(seg)


def threads() -> int:
    """Waiter threads running now (for tests and diagnostics)."""
    return _pool.threads()


def registrations() -> int:
    """Coroutines registered with a waiter thread now (for tests and diagnostics)."""
    return _pool.registrations()


async def aread(h: AsyncReadable, timeout: float | None, copy: bool,
                seen: EndSeen) -> tuple[bool, np.ndarray[Any, Any]]:
    """``h.read(copy, timeout)`` without blocking the loop (see NdShArray.aread); returns
    at an end of stream ``seen`` was not told of (see liveness.py), and notes it there."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    idle = 0.001
    while True:
        try:
            ok, arr = h.read(copy)
            away = None
        except DaemonUnavailableError as exc:  # (no daemon now: waits on, as a blocking read)
            if not h._restarting(exc):
                raise
            ok, arr, away = False, h._last_array(), exc
        if ok:
            return True, arr
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            if away is not None:
                raise away
            return False, arr
        seg = h._sleep_target()
        if seg is None:  # no writer yet (or no daemon): look again soon, as wait() does
            await asyncio.sleep(idle if left is None else min(idle, left))
            idle = min(idle * 2, 0.05)
            continue
        word = seg._c.sleep_begin()  # "may sleep" in our row: the writer will wake the word
        if word is None:
            return False, arr  # closed
        try:
            if seg.has_new(h._sleep_count()) or seg.retired():
                continue
            if h._new_end(seg, seen):  # the writer closed or died (after `word`: none is missed)
                return False, h._last_array()
            if h._sleep_target() is not seg:
                continue  # switched to a newer segment of the tag
            fut: asyncio.Future[None] = loop.create_future()
            reg = _Reg(seg, seg._c.notify_addr, word, fut, loop)
            timer = loop.call_later(SLICE if left is None else min(left, SLICE), _fire, fut)
            _pool.register(reg)
            try:
                await fut
            finally:
                timer.cancel()
                _pool.unregister(reg)
        finally:
            seg._c.sleep_end()


async def aframes(h: AsyncReadable, until_closed: bool, timeout: float | None,
                  copy: bool = False) -> AsyncIterator[np.ndarray[Any, Any]]:
    """See NdShArray.aframes (and frames(), which this mirrors)."""
    seen = h._since_now()  # (across its areads, as frames())
    while True:
        told = seen.key
        try:
            ok, arr = await aread(h, timeout, copy, seen)
        except HandleClosedError:
            return
        if ok:
            yield arr
            continue
        if seen.key == told:
            return  # the timeout passed, or the handle was closed
        if until_closed and seen.key is not None and seen.key[2] == "closed":
            for arr in h._rest(copy):  # what was published before the close and not read yet
                yield arr
            return
