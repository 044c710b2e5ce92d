"""``ndsharray ls --remote``: the tags every reachable bridge exports, asked through the
bridges running on this host (their Unix sockets) or through locators given."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from . import wire, zconfig


def list_remote(endpoint: str | None = None, connect: Sequence[str] = (), timeout: float = 2.0) -> list[dict[str, Any]]:
    """One dict per exported tag (``bridge``, ``tag``, ``dtype``, ``shape``, ``codec``,
    frames, importers), sorted by bridge and tag. Raises OSError when no bridge is reachable."""
    rows = [{"bridge": str(doc["bridge"]), **t} for doc in bridge_status(endpoint, connect, timeout)
            for t in doc.get("tags", ())]
    return sorted(rows, key=lambda r: (r["bridge"], str(r.get("tag"))))


def bridge_status(endpoint: str | None = None, connect: Sequence[str] = (),
                  timeout: float = 2.0) -> list[dict[str, Any]]:
    """Every reachable bridge's own account: ``{"bridge", "tags" (exported), "imported"}``
    (the same dicts as ``Bridge.exported`` and ``Bridge.imported``)."""
    zenoh = zconfig.zenoh_module()
    locators = list(connect) or [f"unixsock-stream/{p}" for p in zconfig.local_sockets(endpoint)]
    if not locators:
        raise OSError("no bridge runs next to this daemon: start one (ndsharray bridge --name ... --connect ...) "
                      "or give --connect LOCATOR")
    cfg = zconfig.build(connect=locators, mode="client")
    cfg.insert_json5("connect/timeout_ms", "2000")  # a client: try for a while, then say so
    cfg.insert_json5("connect/exit_on_failure", "true")
    try:
        session = zenoh.open(cfg)
    except zenoh.ZError as exc:
        raise OSError(f"cannot reach a bridge at {', '.join(locators)}: {exc}") from None
    docs = []
    try:
        for reply in session.get(f"{wire.ROOT}/*/catalog", timeout=timeout):
            sample = reply.ok
            if sample is None:
                continue
            try:
                doc = json.loads(sample.payload.to_bytes())
                if isinstance(doc, dict) and isinstance(doc.get("bridge"), str):
                    docs.append(doc)
            except ValueError:
                continue  # not a catalog this version understands
    finally:
        session.close()
    return sorted(docs, key=lambda d: str(d["bridge"]))
