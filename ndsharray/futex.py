"""Futex wait/wake on a 32-bit word in shared memory, through ctypes (Linux).

Shared (not ``FUTEX_PRIVATE``) operations, because waiter and waker are different processes
mapping the same file. Waking needs no write access, so read-only readers can wake each
other (``close()`` uses that to end a blocked iteration). Where futex is unavailable,
``AVAILABLE`` is False and callers poll.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
FUTEX_WAIT = 0
FUTEX_WAKE = 1
_INT_MAX = 2**31 - 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


AVAILABLE = sys.platform.startswith("linux") and _SYS_FUTEX is not None
if AVAILABLE:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long  # no argtypes: converting them costs more than the call


def wait(addr: int, expected: int, timeout: float | None) -> bool:
    """Sleep while the word at ``addr`` equals ``expected``, at most ``timeout`` seconds.

    Returns False on timeout, True otherwise (woken, value already changed, or a signal):
    callers re-check their condition either way. The GIL is released while sleeping.
    """
    ts = None
    if timeout is not None:
        t = max(0.0, timeout)
        ts = ctypes.byref(_Timespec(int(t), int((t % 1) * 1e9)))
    r = _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), FUTEX_WAIT, ctypes.c_uint(expected & 0xFFFFFFFF),
                 ts, None, 0)
    if r == -1:
        err = ctypes.get_errno()
        if err == errno.ETIMEDOUT:
            return False
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err))
    return True


def wake(addr: int, n: int = _INT_MAX) -> int:
    """Wake up to ``n`` waiters on the word at ``addr``; returns how many were woken."""
    return int(_syscall(_SYS_FUTEX, ctypes.c_void_p(addr), FUTEX_WAKE, n, None, None, 0))
