"""``Bridge``: one Zenoh session that exports local tags and imports remote ones."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .. import config
from ..errors import UsageError
from . import wire, zconfig
from .codecs import Codec
from .exporter import Exporter
from .importer import STALE_AFTER, Importer
from .patterns import TagPattern

log = logging.getLogger("ndsharray.bridge")


class Bridge:
    """Bridge tags between hosts over Eclipse Zenoh.

    ``exports``: globs of local tags to publish (``*`` one tag part, ``**`` any number).
    ``imports``: globs of ``<exporter name>/<tag>``; each matching remote tag is written
    into the local tag of that name. ``codec`` and ``max_rate`` are one value for every
    export, or a mapping ``{glob: value}`` (the first glob matching a tag wins; raw and no
    cap for tags none matches). ``listen``/``connect`` are Zenoh locators
    (``tcp/127.0.0.1:7447``); ``zenoh_config`` a Zenoh JSON5 file (TLS, routers, access
    control). Multicast and gossip scouting are always off. ``stale_after``: seconds an
    imported frame may be late on the link, beyond what the link needs to carry it, before
    it is dropped and the newest frame asked for instead (importer.py, pace.py).

    ``with Bridge("robot1", exports=["camera/**"], listen=["tcp/0.0.0.0:7447"]): ...``
    """

    def __init__(
        self,
        name: str,
        exports: Iterable[str] = (),
        imports: Iterable[str] = (),
        *,
        listen: Iterable[str] = (),
        connect: Iterable[str] = (),
        zenoh_config: str | None = None,
        codec: str | Mapping[str, str] = "raw",
        max_rate: float | Mapping[str, float] | None = None,
        endpoint: str | None = None,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.name = wire.check_name(name)
        self.endpoint = config.resolve_endpoint(endpoint)
        codecs = _per_glob(codec)
        rates = _per_glob(max_rate)
        for hz in rates.values():
            if hz is not None and not (isinstance(hz, (int, float)) and hz > 0):
                raise UsageError(f"max_rate must be a number of Hz above 0, got {hz!r}")
        self.export_patterns = [TagPattern.parse(p) for p in exports]
        self.codecs = [(TagPattern.parse(g), Codec.parse(c)) for g, c in codecs.items()]
        self.rates = [(TagPattern.parse(g), float(r)) for g, r in rates.items()]
        self.import_patterns = [TagPattern.parse(p) for p in imports]
        self.listen, self.connect = list(listen), list(connect)
        self.zenoh_config = zenoh_config
        self.stale_after = stale_after
        self.socket_path = zconfig.local_socket(self.name, self.endpoint)
        self._session: Any = None
        self._exporter: Exporter | None = None
        self._importer: Importer | None = None
        self._lock = threading.Lock()

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> Bridge:
        with self._lock:
            if self._session is not None:
                return self
            zenoh = zconfig.zenoh_module()
            self._claim_socket()
            cfg = zconfig.build([*self.listen, f"unixsock-stream/{self.socket_path}"], self.connect,
                                self.zenoh_config)
            try:
                session = zenoh.open(cfg)
            except zenoh.ZError as exc:
                raise OSError(f"bridge {self.name}: Zenoh could not start: {exc}") from None
            self._session = session
            try:
                self.zid = str(session.zid())
                self._token = session.liveliness().declare_token(wire.alive_key(self.name, self.zid))
                self._exporter = Exporter(zenoh, session, self.name, self.export_patterns, self.codecs, self.rates,
                                          self.endpoint)
                self._importer = Importer(zenoh, session, self.name, self.zid, self.import_patterns, self.endpoint,
                                          self.stale_after)
                self._exporter.start()
                self._importer.start()
                self._catalog = session.declare_queryable(wire.catalog_key(self.name), self._on_catalog)
            except BaseException:
                self._stop()
                raise
        log.info("bridge %s (zid %s) started", self.name, self.zid)
        return self

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._session is None:
            return
        for part in (self._importer, self._exporter):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:  # keep stopping the rest
                    log.warning("bridge %s: %s", self.name, exc)
        session, self._session = self._session, None
        session.close()
        self._importer = self._exporter = None
        log.info("bridge %s stopped", self.name)

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._session is not None

    def _claim_socket(self) -> None:
        """Refuse a second bridge of this name next to this daemon; remove the socket a
        killed one left behind (ours, a socket, nobody accepting)."""
        path = self.socket_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
            raise OSError(f"{path} exists and is not a bridge socket of yours: remove it or use another --name")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except OSError as exc:
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise
                os.unlink(path)  # left by a bridge that was killed
                return
        raise OSError(f"a bridge named {self.name!r} already runs next to {self.endpoint}: stop it first")

    # ---- what it does ----------------------------------------------------------------------

    @property
    def exported(self) -> list[dict[str, Any]]:
        """Per exported tag (one with a live writer): codec, frames read and sent, importers."""
        return [] if self._exporter is None else self._exporter.status()

    @property
    def imported(self) -> list[dict[str, Any]]:
        """Per imported tag: state (waiting, live, ended and why), frames, stale frames dropped."""
        return [] if self._importer is None else self._importer.status()

    def _on_catalog(self, query: Any) -> None:
        """What ``ndsharray ls --remote`` shows of this bridge: its exported tags (and its
        imported ones, for scripts: ``remote.bridge_status``)."""
        doc = {"bridge": self.name, "tags": self.exported, "imported": self.imported}
        query.reply(wire.catalog_key(self.name), json.dumps(doc))

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "running": self.running, "exported": self.exported, "imported": self.imported}


def _per_glob(value: Any) -> dict[str, Any]:
    """``{glob: value}`` from one value for every tag or a mapping."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return {"**": value}
