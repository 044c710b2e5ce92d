"""The daemon's lifecycle contract, owned here: its lock file, the clients' start lock,
starting a daemon and stopping one. Everything else asks this package.

- ``lockfile``: the lock the daemon holds while it runs (one daemon per endpoint), its
  content (who the daemon is, whether it serves yet), the daemon's side of it
  (:class:`DaemonLock`) and the clients' look at it (:func:`daemon_state`, a local check
  that needs no request), and the start lock's name.
- ``start``: any client may start the daemon (auto-start); starters serialise on the start
  lock, so exactly one daemon is spawned.
- ``command``: the argv that runs this installation's ``ndsharrayd`` (``python -I``) and the
  folders it is handed to find its dependencies.
- ``stop``: the daemon's verified pid, and stopping it.

A daemon is, as a client sees it: not running (nobody holds the lock); starting (it holds
the lock but has not written who it is); running (it has: its identity changes with every
start), then serving (it has recovered and answers); or in another pid namespace, which
ndsharray cannot cross (its pid is not ours to check, nor ours its): every client call says
so at once instead of waiting for it.

``ndsharrayd`` imports this package (never the reverse), and nothing here uses zmq.
"""

from __future__ import annotations

from .command import daemon_command
from .lockfile import (
    STARTING,
    AlreadyRunning,
    DaemonLock,
    DaemonState,
    crashed,
    daemon_running,
    daemon_state,
    other_namespace,
    start_lock_path,
)
from .start import start_daemon
from .stop import daemon_pid, stop_daemon

__all__ = [
    "STARTING", "AlreadyRunning", "DaemonLock", "DaemonState", "crashed", "daemon_command",
    "daemon_pid", "daemon_running", "daemon_state", "other_namespace", "start_daemon",
    "start_lock_path", "stop_daemon",
]
