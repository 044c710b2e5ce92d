"""The Zenoh configuration a bridge opens its session with.

Peers are reached only through the locators given: multicast and gossip scouting are
always off, so a bridge never announces itself on, or reaches into, a network nobody
named. Zenoh's shared-memory transport is off too (it leaves files in /dev/shm). A
``--zenoh-config`` JSON5 file (TLS, routers, access control) is the base; the
locators given on the command line are added to its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .. import config
from ..errors import UsageError

RETRY = {"period_init_ms": 250, "period_max_ms": 1000, "period_increase_factor": 2}


def zenoh_module() -> Any:
    try:
        import zenoh
    except ImportError:
        raise ImportError("ndsharray bridge needs Eclipse Zenoh: pip install 'ndsharray[bridge]'") from None
    return zenoh


def build(listen: Sequence[str] = (), connect: Sequence[str] = (), config_file: str | None = None,
          mode: str = "peer") -> Any:
    """A ``zenoh.Config``: the file's (if any), plus ``listen``/``connect`` locators,
    scouting off. Raises UsageError (a ValueError) naming the file or locator that is wrong."""
    zenoh = zenoh_module()
    if config_file is not None:
        try:
            cfg = zenoh.Config.from_file(config_file)
        except zenoh.ZError as exc:
            raise UsageError(f"--zenoh-config {config_file}: {exc}") from None
    else:
        cfg = zenoh.Config()
        cfg.insert_json5("mode", json.dumps(mode))
    for key in ("scouting/multicast/enabled", "scouting/gossip/enabled"):
        cfg.insert_json5(key, "false")
    # Zenoh's shared-memory transport helps only peers on one host, and its /dev/shm files
    # (a 16 MB pool once large frames pass) outlive a bridge that stops or is killed.
    cfg.insert_json5("transport/shared_memory/enabled", "false")
    for key, extra in (("listen/endpoints", listen), ("connect/endpoints", connect)):
        mine = _endpoints(json.loads(cfg.get_json(key)))
        try:
            cfg.insert_json5(key, json.dumps(mine + [str(e) for e in extra if e not in mine]))
        except zenoh.ZError as exc:
            raise UsageError(f"bad Zenoh locator in {list(extra)}: {exc} (e.g. tcp/127.0.0.1:7447)") from None
    # A peer that cannot reach its --connect locators keeps trying in the background (the
    # other host may boot later) instead of failing to start.
    cfg.insert_json5("connect/timeout_ms", "-1")
    cfg.insert_json5("connect/exit_on_failure", "false")
    if config_file is None:  # and comes back within a second when the other side does
        cfg.insert_json5("connect/retry", json.dumps(RETRY))
    return cfg


def _endpoints(value: Any) -> list[str]:
    if isinstance(value, dict):  # per-mode defaults: {"router": [...], "peer": [...]}
        return []  # (Zenoh's default is to listen on every interface: never ours)
    return [str(v) for v in value or ()]


def local_socket(name: str, endpoint: str | None = None) -> str:
    """The Unix socket a bridge named ``name`` also listens on, for ``ndsharray ls --remote``
    on its host: next to the daemon's socket (a private folder), else in the runtime folder."""
    path = config.ipc_path(config.resolve_endpoint(endpoint))
    folder = os.path.dirname(path) if path else config.runtime_dir()
    return os.path.join(folder, f"bridge-{name}.sock")


def local_sockets(endpoint: str | None = None) -> list[str]:
    """The sockets of the bridges running next to ``endpoint``'s daemon (that we own)."""
    folder = os.path.dirname(local_socket("x", endpoint))
    out = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    import stat

    for n in names:
        if n.startswith("bridge-") and n.endswith(".sock"):
            p = os.path.join(folder, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
                out.append(p)
    return out
