"""This process: its pid, and what runs when it forks or exits, in one place.

State that belongs to one process lives in a few modules: the open segments' fds
(:mod:`~ndsharray.segment.mapping`), the daemon connections and the zmq context
(:mod:`~ndsharray.transport`), the registrar's thread and the handles it watches
(:mod:`~ndsharray.registrar`), and the open handles (:mod:`~ndsharray.handle`). Each hands
its hook to this module, which alone registers with ``os.register_at_fork`` and ``atexit``
and runs the hooks in this order, whatever order the modules were imported in:

In a forked child (``after_in_child``):

0. (C) ``_hot`` updates its own copy of the pid through ``pthread_atfork``, inside
   ``fork()`` itself: before any Python code runs in the child, and for a fork not made by
   ``os.fork`` too (a pin dropped in the child must never unpin the parent's slot).
1. ``pid``: :func:`pid` answers the child's pid (every later step may ask it).
2. ``segments``: close the inherited segment fds: they share the parent's OFD locks, so a
   dead parent's pins and rows would outlive it.
3. ``connections``: abandon the parent's zmq context and sockets, never using them.
4. ``registrar``: a fresh one: the parent's thread and handle set are not this process's.
5. ``aio``: a fresh asyncio waiter pool: the parent's waiter threads do not exist here.
6. ``handles``: inherited handles lose their one-call paths and get fresh locks, so their
   next call checks the pid (a writer refuses, a reader reopens as this process).

At exit (``atexit``):

1. ``handles``: close every open handle (writers hand their tags back);
2. ``connections``: close the daemon connections, after step 1's requests went out.

Pure bookkeeping: no zmq, no segment, no request here.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable

log = logging.getLogger("ndsharray")

FORK_STEPS = ("segments", "connections", "registrar", "aio", "handles")  # after step 1, the pid
EXIT_STEPS = ("handles", "connections")

_on_fork: dict[str, Callable[[], None]] = {}
_on_exit: dict[str, Callable[[], None]] = {}


class _Pid:
    value = os.getpid()  # kept current across fork: no syscall per use


def pid() -> int:
    """This process's pid (the child's after a fork)."""
    return _Pid.value


def on_fork(step: str, hook: Callable[[], None]) -> None:
    """Run ``hook`` in a forked child, at ``step`` of :data:`FORK_STEPS`."""
    if step not in FORK_STEPS:
        raise ValueError(f"fork step {step!r} is not one of {FORK_STEPS}")
    _on_fork[step] = hook


def on_exit(step: str, hook: Callable[[], None]) -> None:
    """Run ``hook`` at interpreter exit, at ``step`` of :data:`EXIT_STEPS`."""
    if step not in EXIT_STEPS:
        raise ValueError(f"exit step {step!r} is not one of {EXIT_STEPS}")
    _on_exit[step] = hook


def _after_fork_in_child() -> None:
    _Pid.value = os.getpid()
    for step in FORK_STEPS:
        hook = _on_fork.get(step)
        if hook is not None:
            hook()


def _at_exit() -> None:
    for step in EXIT_STEPS:
        hook = _on_exit.get(step)
        if hook is None:
            continue
        try:
            hook()
        except Exception:  # one step's trouble must not skip the next
            log.debug("ndsharray: exit step %s failed", step, exc_info=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
