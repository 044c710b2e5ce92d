"""The registrar: keeps this process's handles registered with their daemon, off the hot path.

The hot path never talks to the daemon, so nothing on it notices that the daemon died and
came back. One background thread per process looks at the daemon's lock file five times a
second (a local file read, no request): when the daemon's identity changed, it re-registers
every live handle of this process with the new one, restarting the daemon first when it
crashed and auto-start is allowed (one stopped on purpose stays stopped). Calls that ask the
daemon about a segment (a reader's lookup, a writer's new generation) run the same
:meth:`Registrar.check` first, so they never act on a stale daemon.

The same thread sends the requests nobody waits for (``Connection.post``, through
``transport.flush_all``): the registration of a reader that found its segment through the
tag's pointer, and the release of a handle the garbage collector closed.
"""

from __future__ import annotations

import _thread
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from . import config, daemonctl, process, transport
from .errors import DaemonUnavailableError

log = logging.getLogger("ndsharray")
INTERVAL = 0.2  # seconds between looks at the lock file (a local read, no request)
_POSTED = "registration posted"  # never a lock file's content either
_UNREGISTERED = "not registered"  # never a lock file's content (pid and start time)


class Registrant(Protocol):
    """A handle, as the registrar sees it: its daemon, and whether it is still open."""

    @property
    def endpoint(self) -> str: ...

    @property
    def closed(self) -> bool: ...


Reregister = Callable[[Any], None]  # called with the handle after its daemon changed


def daemon_identity(endpoint: str) -> str | None:
    """The running daemon's identity (pid and start time), or None if none runs."""
    state = daemonctl.daemon_state(endpoint)
    return None if state is None else state.ident


class Registrar:
    """This process's handles by daemon endpoint, and the thread that keeps them registered."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.RLock()  # held while re-registering, which waits for a daemon
        # Only for the set itself: close() (untrack) must never wait for a daemon.
        self._handles_lock = threading.Lock()
        # For _seen and the thread's start, never held across a wait: opening a handle
        # (track) must not wait for a restart that _lock may be holding for a second.
        self._state_lock = threading.Lock()
        # Each handle with what re-registers it (a function of the handle, so that the
        # registrar holds no strong reference to it).
        self._handles: weakref.WeakKeyDictionary[Registrant, Reregister] = weakref.WeakKeyDictionary()
        self._seen: dict[str, str | None] = {}
        self._started = False
        self._pid = 0

    def track(self, handle: Registrant, reregister: Reregister, registered: bool = True) -> None:
        """Watch ``handle``'s daemon from now on; when it changes, call ``reregister(handle)``.
        ``registered=False``: its registration is posted, not yet sent; the thread notes the
        daemon's identity before sending it."""
        endpoint = handle.endpoint
        with self._handles_lock:
            self._handles[handle] = reregister
        # Not under _lock: a reader found through its pointer needs no daemon, so it must
        # not wait while this thread starts one and re-registers (a restart stalled every
        # reopening reader for as long). Its posted attach reaches the new daemon anyway.
        with self._state_lock:
            if registered and endpoint not in self._seen:
                self._seen[endpoint] = daemon_identity(endpoint)
            if not self._started or self._pid != process.pid():
                self._pid = process.pid()
                self._started = True
                # _thread, not threading: Thread.start() waits until the thread runs, which
                # costs an attaching reader most of a millisecond on a busy machine.
                _thread.start_new_thread(self._run, ())

    def untrack(self, handle: Registrant) -> None:
        with self._handles_lock:
            self._handles.pop(handle, None)

    def _live(self, endpoint: str | None = None) -> list[tuple[Registrant, Reregister]]:
        with self._handles_lock:
            return [(h, f) for h, f in self._handles.items()
                    if not h.closed and endpoint in (None, h.endpoint)]

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
                # Restart only a daemon that crashed: one stopped on purpose stays stopped
                # until someone needs it again.
                if not config.autostart_enabled() or not daemonctl.crashed(endpoint):
                    return self._seen[endpoint]
                daemonctl.start_daemon(endpoint)
                ident = daemon_identity(endpoint)
            first = self._seen[endpoint] == _POSTED
            self._seen[endpoint] = ident
            try:
                for handle, reregister in self._live(endpoint):
                    reregister(handle)
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
            if self._pid != process.pid():
                return
            try:
                self._round()
            except Exception as exc:  # the registrar must outlive any one failure
                log.warning("ndsharray registrar: %s", exc)

    def _round(self) -> None:
        live = self._live()
        with self._lock, self._state_lock:
            endpoints = {h.endpoint for h, _ in live}
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


registrar = Registrar()


# After a fork: the parent's handles and thread are not this process's.
process.on_fork("registrar", registrar._reset)
