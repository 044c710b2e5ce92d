"""Retire a segment without one load or store of the daemon's own into its mapping.

Any process of the user (or of the group, under --group) can shrink a segment file at
any moment, and a load or store through a mapping past the new end is a SIGBUS that kills
the daemon. The futex syscall's FUTEX_WAKE_OP performs an atomic operation on a word in
the kernel, where a page past the end of the file makes the call fail with EFAULT instead.
So the daemon raises the retired flag and moves the notify word (waking every sleeper,
as ``_hot.retire`` does) with two such calls, and an fstat check is no longer all that
stands between a truncate and a crash.

Where the syscall number is not known here, :func:`retire` falls back to ``_hot.retire``
after an fstat: a process that shrinks the file in the microseconds between the two can
still make that store fault there.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform

from ndsharray.layout import OFF_NOTIFY, OFF_RETIRED
from ndsharray.segment.mapping import mapping_address
from ndsharray.segment.mapping import retire as hot_retire

# SYS_futex by machine (the generic table, used by arm64 and riscv, numbers it 98).
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98, "ppc64le": 221,
              "s390x": 238, "i686": 240, "armv7l": 240}.get(platform.machine())
FUTEX_WAKE_OP = 5
FUTEX_OP_SET, FUTEX_OP_ADD = 0, 1
_ALL = 0x7FFFFFFF
_libc = ctypes.CDLL(None, use_errno=True)


FUTEX_OP_CMP_LT = 2


def _op(op: int, arg: int) -> int:
    """FUTEX_OP(op, arg, FUTEX_OP_CMP_LT, 0): the word becomes ``word op arg``. The compare
    decides whether the call also wakes sleepers "on the second word" (the same one here);
    the kernel wakes one there even when asked for none, so make it false (our words are
    small counts, never negative) and let ``wake`` alone say how many wake."""
    return ((op & 0xF) << 28) | ((FUTEX_OP_CMP_LT & 0xF) << 24) | ((arg & 0xFFF) << 12)


def _wake_op(word: int, op: int, arg: int, wake: int) -> None:
    """Atomically apply ``op arg`` to the u32 at address ``word`` and wake up to ``wake``
    of its waiters, all in the kernel."""
    assert _SYS_FUTEX is not None
    rc = _libc.syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(word), ctypes.c_long(FUTEX_WAKE_OP),
                       ctypes.c_long(wake), ctypes.c_void_p(0), ctypes.c_void_p(word),
                       ctypes.c_long(_op(op, arg)))
    if rc < 0:
        err = ctypes.get_errno()
        if err == errno.EFAULT:
            raise OSError(err, "the segment's header page is gone (another process truncated it)")
        raise OSError(err, os.strerror(err))


def retire(fd: int, why: int) -> None:
    """Flag the segment open at ``fd`` replaced (1) or its tag removed (2), then move its
    notify word and wake every sleeper.

    "Removed" wins over "replaced": the flag is read with pread and only ever raised. Only
    the daemon writes 2 (and writers 1), so a writer raising 0 to 1 meanwhile is harmless.
    """
    if os.fstat(fd).st_size < mmap.PAGESIZE:  # (mmap refuses to map past the end anyway)
        raise ValueError("the file no longer holds a header (truncated by another process)")
    with mmap.mmap(fd, mmap.PAGESIZE) as mm:
        if _SYS_FUTEX is None:
            hot_retire(mm, why)
            return
        base = mapping_address(mm)
        if int.from_bytes(os.pread(fd, 4, OFF_RETIRED), "little") < why:
            _wake_op(base + OFF_RETIRED, FUTEX_OP_SET, why, 0)
        _wake_op(base + OFF_NOTIFY, FUTEX_OP_ADD, 1, _ALL)
