"""The client's only zmq code: one request/reply connection per endpoint and process.

Lazy Pirate: a DEALER socket, every request waits at most ``timeout`` for its reply; on a
timeout the socket is closed with linger 0, the daemon's liveness is checked through its
lock file (auto-starting one if allowed; both through daemonctl) and the request is sent
again, a bounded number of times. Request ids let a late reply to an abandoned request be dropped.

Fork safety: zmq contexts must never be used across ``fork``. After a fork the child forgets
the parent's connections without closing them (closing would disturb the parent's sockets)
and builds its own on first use.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from typing import Any, TypeVar

import zmq

from . import config, daemonctl, process
from .errors import (
    DaemonUnavailableError,
    NdShArrayError,
    ProtocolError,
    from_reply,
)
from .protocol import OPS, Op, decode_reply, encode_request
from .replies import Wire

log = logging.getLogger("ndsharray")

R = TypeVar("R", bound=Wire)


# While a request waits for its reply, look this often whether the daemon it went to still
# runs: one that died or was replaced will never answer, and nobody should wait out the
# timeout for it (a lock-file read, only once a reply is late).
WATCH = 0.05


class Connection:
    """Request/reply to one daemon; thread-safe, reconnecting, never blocking forever."""

    def __init__(self, endpoint: str, timeout: float = 3.0, retries: int = 3) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sock: zmq.Socket[bytes] | None = None
        # Requests whose answer nobody waits for (a reader's registration, a collected
        # handle's release): sent by the registrar thread, or before this connection's next
        # request, so the daemon sees them in order and before anything this process asks.
        self._posted: collections.deque[tuple[str, bool, dict[str, Any]]] = collections.deque()

    def post(self, op: str, *, autostart: bool = False, **args: Any) -> None:
        """Queue a request to send soon without waiting; safe from a garbage collector
        (``deque.append`` takes no lock). Failures are logged, not raised."""
        self._posted.append((op, autostart, args))

    def _cancel_posted(self, op: str, token: str) -> bool:
        """Remove the posted ``op`` of the handle with ``token``; True if there was one."""
        for item in list(self._posted):
            if item[0] == op and item[2].get("token") == token:
                try:
                    self._posted.remove(item)
                except ValueError:
                    return False  # the registrar sent it meanwhile
                return True
        return False

    @property
    def has_posted(self) -> bool:
        return bool(self._posted)

    def flush(self) -> None:
        """Send the posted requests now."""
        with self._lock:
            self._send_posted()

    def _send_posted(self, patient: bool = True) -> None:
        """``patient=False``: no auto-start and no retries (for a close(), which must not wait
        for a daemon that died meanwhile; a reader's attach lost so is sent again when the
        registrar re-registers it with the next daemon)."""
        while self._posted:
            op, autostart, args = self._posted.popleft()
            autostart = autostart and patient
            try:
                self._request(op, autostart, self.retries if autostart else 0, args)
            except NdShArrayError as exc:
                # A reader works unregistered (the daemon counts it after its next restart);
                # a release the daemon missed is noticed when the process dies.
                log.log(logging.WARNING if op == "attach" else logging.DEBUG,
                        "could not %s %r: %s", op, args.get("tag"), exc)

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            sock = _context().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def _ensure_daemon(self, autostart: bool = True) -> str:
        """The identity of the daemon that runs, after starting one if allowed and needed."""
        state = daemonctl.daemon_state(self.endpoint)
        if state is not None:
            if state.elsewhere:
                raise daemonctl.other_namespace(self.endpoint, state)
            return state.ident
        if not autostart:
            raise DaemonUnavailableError(
                f"no ndsharrayd serves {self.endpoint}; a writer or reader starts one, or "
                f"start it with: ndsharrayd --endpoint {self.endpoint}", absent=True
            )
        if not config.autostart_enabled():
            raise DaemonUnavailableError(
                f"no ndsharrayd serves {self.endpoint} and {config.ENV_AUTOSTART}=0 forbids "
                f"starting one; start it with: ndsharrayd --endpoint {self.endpoint}", absent=True
            )
        daemonctl.start_daemon(self.endpoint)
        state = daemonctl.daemon_state(self.endpoint)
        return daemonctl.STARTING if state is None else state.ident

    def send_or_post(self, op: str, **args: Any) -> None:
        """Send a request whose answer nobody needs (close()'s release or detach) without
        waiting for a daemon that is down or restarting. No daemon runs: nothing to tell (a
        successor learns from the segment headers, which a closing writer clears first).
        One runs but does not serve yet, or another thread's request holds the connection
        (it may be waiting for that daemon): post it; it goes before this process's next
        request (the order that matters: a release before our next claim of the tag), or
        with the registrar within its round. Otherwise send it now: a serving daemon answers
        in a millisecond, and one that dies meanwhile ends the wait (WATCH)."""
        if not self._lock.acquire(timeout=WATCH):
            self.post(op, **args)
            return
        try:
            if op == "detach" and self._cancel_posted("attach", args["token"]):
                return  # a reader closed before its registration went: neither need go
            state = daemonctl.daemon_state(self.endpoint)
            if state is None or state.elsewhere:
                log.debug("no daemon at %s to %s %r", self.endpoint, op, args.get("tag"))
            elif not state.serving:
                self.post(op, **args)
            else:
                self._send_posted(patient=False)
                try:
                    self._request(op, False, 0, args)
                except NdShArrayError as exc:
                    log.debug("could not %s %r: %s", op, args.get("tag"), exc)
        finally:
            self._lock.release()

    def request(self, op: Op[R], *, autostart: bool = True, retries: int | None = None,
                **args: Any) -> R:
        """Send one request (``op``: one of ``protocol.OPS``) and return its reply, checked
        against the op's reply class; raise the mapped exception on an error reply.

        ``autostart=False``: fail at once when no daemon runs instead of starting one.
        """
        retries = self.retries if retries is None else retries
        with self._lock:
            self._send_posted()
            result: R = self._request(op.name, autostart, retries, args)
            if self._posted:  # (posted while we waited: a close() in another thread)
                self._send_posted()
        return result

    def _request(self, op: str, autostart: bool, retries: int, args: dict[str, Any]) -> Any:
        """The reply to ``op``: an instance of its reply class (``protocol.OPS``)."""
        ident = self._ensure_daemon(autostart)  # a local lock-file check: restarts a dead daemon at once
        gone = False
        for attempt in range(retries + 1):
            req_id = next(self._ids)
            sock = self._socket()
            sock.send(encode_request(req_id, op, **args))
            deadline = time.monotonic() + self.timeout
            gone = False
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not sock.poll(int(min(left, WATCH) * 1000) + 1, zmq.POLLIN):
                    state = daemonctl.daemon_state(self.endpoint)
                    if ident == daemonctl.STARTING and state is not None:
                        ident = state.ident  # sent while it started: it has now said who it is
                    elif state is None or state.ident != ident:
                        gone = True  # the daemon we asked died or was replaced: no answer comes
                        break
                    continue
                data = sock.recv()
                try:
                    reply = decode_reply(data)
                    if reply.id != req_id:
                        continue  # a late answer to an abandoned request
                    if reply.ok:
                        return OPS[op].reply_from(reply.result)
                except ProtocolError as exc:
                    raise ProtocolError(f"bad reply from {self.endpoint}: {exc}") from None
                raise from_reply(reply.code, reply.message)
            # No answer in time, or none will come: the daemon may have died or restarted.
            self._drop_socket()
            if attempt < retries:
                ident = self._ensure_daemon(autostart)
        if gone:
            raise DaemonUnavailableError(
                f"ndsharrayd at {self.endpoint} stopped before it answered {op!r}; the next "
                "request starts a new one (unless NDSHARRAY_AUTOSTART=0)", absent=True)
        raise DaemonUnavailableError(
            f"ndsharrayd at {self.endpoint} did not answer {op!r} within "
            f"{self.timeout:g} s, {retries + 1} times; is it overloaded or stuck? "
            f"(its log: {config.log_path(self.endpoint)})"
        )

    def close(self) -> None:
        with self._lock:
            self._drop_socket()


_state_lock = threading.Lock()
_ctx: zmq.Context[zmq.Socket[bytes]] | None = None
_connections: dict[str, Connection] = {}
_abandoned: list[object] = []  # the parent's zmq objects, kept alive and untouched in a child


def _context() -> zmq.Context[zmq.Socket[bytes]]:
    global _ctx
    with _state_lock:
        if _ctx is None:
            _ctx = zmq.Context()
        return _ctx


def connection(endpoint: str | None = None) -> Connection:
    """The process's shared connection to ``endpoint`` (default: the user's daemon)."""
    ep = config.resolve_endpoint(endpoint)
    with _state_lock:
        conn = _connections.get(ep)
        if conn is None:
            conn = _connections[ep] = Connection(ep)
        return conn


def flush_all() -> None:
    """Send every connection's posted requests (the registrar thread calls this)."""
    with _state_lock:
        conns = [c for c in _connections.values() if c.has_posted]
    for conn in conns:
        conn.flush()


def close_all() -> None:
    """Close this process's daemon connections (they reopen on next use)."""
    with _state_lock:
        conns = list(_connections.values())
        _connections.clear()
    for conn in conns:
        conn.close()


process.on_exit("connections", close_all)


def _after_fork_in_child() -> None:
    global _ctx, _state_lock
    _abandoned.extend([_ctx, *_connections.values()])
    _ctx = None
    _connections.clear()
    _state_lock = threading.Lock()


process.on_fork("connections", _after_fork_in_child)
