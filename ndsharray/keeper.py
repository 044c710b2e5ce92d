"""Re-registration after a daemon restart, off the hot path.

The hot path never talks to the daemon, so nothing on it notices that the daemon died and
came back. A background thread per process looks at the daemon's lock file five times a second
(a local file read, no request): when the daemon's identity changed, or no daemon runs and
auto-start is allowed, it (re)starts one and re-registers every live handle of this
process. Metadata calls run the same check first, so they never act on a stale daemon.

The same thread sends requests nobody waits for (``Connection.post``): the registration of
a reader that found its segment through the tag's pointer, and the release of a handle the
garbage collector closed.
"""

from __future__ import annotations

import _thread
import logging
import os
import threading
import weakref
from typing import Protocol

from . import config, transport
from .errors import DaemonUnavailableError

log = logging.getLogger("ndsharray")
INTERVAL = 0.2  # seconds between looks at the lock file (a local read, no request)
_POSTED = "registration posted"  # never a lock file's content either
_UNREGISTERED = "not registered"  # never a lock file's content (pid and start time)


class Registrant(Protocol):
    _endpoint: str
    _closed: bool

    def _reregister(self) -> None: ...


def daemon_identity(endpoint: str) -> str | None:
    """The running daemon's identity (pid and start time), or None if none runs."""
    state = transport.daemon_state(endpoint)
    return None if state is None else state[0]


class Keeper:
    def __init__(self) -> None:
        self._lock = threading.RLock()  # held while re-registering, which waits for a daemon
        # Only for the set itself: close() (untrack) must never wait for a daemon.
        self._handles_lock = threading.Lock()
        # For _seen and the thread's start, never held across a wait: opening a handle
        # (track) must not wait for a restart that _lock may be holding for a second.
        self._state_lock = threading.Lock()
        self._handles: weakref.WeakSet[Registrant] = weakref.WeakSet()
        self._seen: dict[str, str | None] = {}
        self._started = False
        self._pid = 0

    def track(self, handle: Registrant, registered: bool = True) -> None:
        """Watch ``handle``'s daemon from now on. ``registered=False``: its registration is
        posted, not yet sent; the thread notes the daemon's identity before sending it."""
        with self._handles_lock:
            self._handles.add(handle)
        # Not under _lock: a reader found through its pointer needs no daemon, so it must
        # not wait while this thread starts one and re-registers (a restart stalled every
        # reopening reader for as long). Its posted attach reaches the new daemon anyway.
        with self._state_lock:
            if registered and handle._endpoint not in self._seen:
                self._seen[handle._endpoint] = daemon_identity(handle._endpoint)
            if not self._started or self._pid != os.getpid():
                self._pid = os.getpid()
                self._started = True
                # _thread, not threading: Thread.start() waits until the thread runs, which
                # costs an attaching reader most of a millisecond on a busy machine.
                _thread.start_new_thread(self._run, ())

    def defer(self, conn: transport.Connection, op: str, tag: str, token: str) -> None:
        """Queue a release/detach from a garbage-collected handle; the thread sends it within
        ``INTERVAL`` (no wake-up: the collector may run inside ``Event.set`` itself)."""
        conn.post(op, tag=tag, token=token)

    def post(self, conn: transport.Connection, op: str, **args: object) -> None:
        """Have the thread send a request within ``INTERVAL``, or this process's next request
        send it first. Not at once: a fresh process's first request builds the zmq context
        and socket while holding the GIL for milliseconds, which would stall the caller's
        next steps (a reader's first read)."""
        conn.post(op, autostart=True, **args)

    def untrack(self, handle: Registrant) -> None:
        with self._handles_lock:
            self._handles.discard(handle)

    def _live(self, endpoint: str | None = None) -> list[Registrant]:
        with self._handles_lock:
            return [h for h in self._handles if not h._closed and endpoint in (None, h._endpoint)]

    def check(self, endpoint: str) -> str | None:
        """Re-register this process's handles on ``endpoint`` if its daemon changed; returns
        the identity of the daemon they are registered with (None: not watched, none runs)."""
        with self._lock:
            if endpoint not in self._seen:
                return None
            ident = daemon_identity(endpoint)
            if ident == self._seen[endpoint] and ident is not None:
                return ident
            if ident is None:
                # Restart only a daemon that crashed (its lock file is still there): one
                # stopped on purpose stays stopped until someone needs it again.
                if not config.autostart_enabled() or not os.path.exists(config.lock_path(endpoint)):
                    return self._seen[endpoint]
                transport.start_daemon(endpoint)
                ident = daemon_identity(endpoint)
            first = self._seen[endpoint] == _POSTED
            self._seen[endpoint] = ident
            try:
                for handle in self._live(endpoint):
                    handle._reregister()
            except DaemonUnavailableError:
                # The new daemon went away or did not answer: the next look tries again. (A
                # refusal, such as --max-clients, would only be refused again every 0.2 s.)
                self._seen[endpoint] = _UNREGISTERED
                raise
            if not first:
                log.info("re-registered with the new daemon at %s", endpoint)
            return ident

    def _run(self) -> None:
        sleep = threading.Event()
        while True:
            sleep.wait(INTERVAL)
            if self._pid != os.getpid():
                return
            try:
                self._round()
            except Exception as exc:  # the keeper must outlive any one failure
                log.warning("ndsharray keeper: %s", exc)

    def _round(self) -> None:
        live = self._live()
        with self._lock, self._state_lock:
            endpoints = {h._endpoint for h in live}
            for ep in endpoints - self._seen.keys():
                # Only handles whose registration was posted (readers found through their
                # tag's pointer) are here. The daemon they found may have stopped and
                # another started since, and the posted attach reaches the new one, whose
                # answer nobody reads: a reader would then wait on its old segment for
                # good. So check() below re-registers them with whatever daemon runs now,
                # which compares their segment with the one it knows (an attach twice is
                # harmless).
                self._seen[ep] = _POSTED
            for ep in self._seen.keys() - endpoints:
                del self._seen[ep]
        transport.flush_all()
        for ep in endpoints:
            try:
                self.check(ep)
            except Exception as exc:  # one endpoint's trouble must not starve the others
                log.warning("could not re-register with the daemon at %s: %s", ep, exc)


keeper = Keeper()


def _after_fork_in_child() -> None:
    global keeper
    keeper = Keeper()  # the parent's handles and thread are not this process's


os.register_at_fork(after_in_child=_after_fork_in_child)
