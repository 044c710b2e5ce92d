"""The ``ndsharray bridge`` command and ``ndsharray ls --remote`` (registered in ndsharray.cli)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Any

import click

from ..table import render, terminal_width


def _per_glob(values: tuple[str, ...], what: str, convert: Any) -> dict[str, Any]:
    """``[GLOB=]VALUE`` options: a bare value applies to every export (glob ``**``)."""
    out: dict[str, Any] = {}
    for v in values:
        glob, eq, value = v.rpartition("=")
        try:
            out[glob if eq else "**"] = convert(value)
        except ValueError as exc:
            raise click.BadParameter(f"{v!r}: {exc}", param_hint=what) from None
    return out


@click.command("bridge")
@click.option("--name", required=True, help="This bridge's name: importers see its tags as NAME/<tag>.")
@click.option("--export", "exports", multiple=True, metavar="GLOB",
              help="Publish local tags matching GLOB ('*' one part, '**' any). Repeatable.")
@click.option("--import", "imports", multiple=True, metavar="GLOB",
              help="Write remote tags matching EXPORTER/GLOB into local tags EXPORTER/<tag>. Repeatable.")
@click.option("--listen", multiple=True, metavar="LOCATOR", help="Zenoh locator to accept peers on, e.g. "
              "tcp/0.0.0.0:7447 (plain TCP is unencrypted: see --zenoh-config for TLS). Repeatable.")
@click.option("--connect", multiple=True, metavar="LOCATOR", help="Zenoh locator of a peer, e.g. "
              "tcp/robot:7447; retried until it answers. Repeatable.")
@click.option("--zenoh-config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A Zenoh JSON5 config file (TLS, routers, access control); scouting stays off.")
@click.option("--codec", "codecs", multiple=True, metavar="[GLOB=]raw|zstd[:LEVEL]|jpeg[:QUALITY]",
              help="How exported frames travel (default raw); GLOB= limits it to some tags. Repeatable.")
@click.option("--max-rate", "rates", multiple=True, metavar="[GLOB=]HZ",
              help="Send at most HZ frames per second of each exported tag (GLOB= for some). Repeatable.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING"]), default="INFO", show_default=True)
@click.pass_obj
def bridge(endpoint: str, name: str, exports: tuple[str, ...], imports: tuple[str, ...], listen: tuple[str, ...],
           connect: tuple[str, ...], zenoh_config: str | None, codecs: tuple[str, ...], rates: tuple[str, ...],
           log_level: str) -> None:
    """Bridge tags to and from other hosts over Eclipse Zenoh, until Ctrl-C or SIGTERM."""
    from . import Bridge

    if not exports and not imports:
        raise click.UsageError("give at least one --export GLOB or --import GLOB")
    logging.basicConfig(level=log_level, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    def hz(v: str) -> float:
        f = float(v)
        if not f > 0:
            raise ValueError("the rate must be above 0 Hz")
        return f

    b = Bridge(name, exports, imports, listen=listen, connect=connect, zenoh_config=zenoh_config,
               codec=_per_glob(codecs, "--codec", str) or "raw", max_rate=_per_glob(rates, "--max-rate", hz) or None,
               endpoint=endpoint)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    b.start()
    try:
        click.echo(f"bridge {name} running (zid {b.zid}; Ctrl-C stops it)", err=True)
        while not done.wait(1.0):
            pass
    finally:
        b.stop()


REMOTE_HEADER = ["BRIDGE", "TAG", "DTYPE", "SHAPE", "CODEC", "SENT", "IMPORTERS"]


def print_remote(endpoint: str, prefix: str, as_json: bool, connect: tuple[str, ...] = ()) -> None:
    """``ndsharray ls --remote``: tags of every bridge reachable from this host's bridges."""
    from .remote import list_remote

    rows = [r for r in list_remote(endpoint, connect) if f"{r['bridge']}/{r['tag']}".startswith(prefix)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no bridge this host can reach exports a tag" + (f" under {prefix!r}" if prefix else ""))
        return
    table = [[r["bridge"], r["tag"], r.get("dtype") or "-",
              "x".join(map(str, r["shape"])) if r.get("shape") is not None else "-",
              str(r.get("codec")), str(r.get("frames_sent")), " ".join(r.get("importers") or []) or "-"]
             for r in rows]
    click.echo(render(REMOTE_HEADER, table, terminal_width())[0])
