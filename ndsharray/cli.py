"""The ``ndsharray`` command: thin wrappers over library calls, one per command."""

from __future__ import annotations

import json
from typing import Any

import click

from . import config
from ._version import __version__
from .admin import TagInfo, daemon_pid, daemon_stats, list_tags, stop_daemon
from .errors import NdShArrayError
from .transport import start_daemon


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.0f} min"


def _row(t: TagInfo) -> list[str]:
    writer = str(t.writer_pid) if t.writer_pid else (f"gone ({t.last_writer_pid})" if t.last_writer_pid else "-")
    return [
        t.tag, t.dtype or "-", "-" if t.shape is None else "x".join(map(str, t.shape)) or "()",
        _size(t.nbytes) if t.dtype else "-", writer, str(t.readers), str(t.writes),
        _age(t.last_write_age_s), str(t.generation),
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


class _Cli(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NdShArrayError as exc:  # operational errors: one line, exit 1
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar=config.ENV_ENDPOINT, default=None,
              help="The daemon's ZeroMQ endpoint (default: this user's daemon).")
@click.version_option(__version__, prog_name="ndsharray")
@click.pass_context
def main(ctx: click.Context, endpoint: str | None) -> None:
    """Share numpy arrays between processes by tag."""
    ctx.obj = config.resolve_endpoint(endpoint)


@main.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list for scripts.")
@click.pass_obj
def ls(endpoint: str, as_json: bool) -> None:
    """List live tags."""
    tags = list_tags(endpoint)
    if as_json:
        click.echo(json.dumps([t.as_json() for t in tags], indent=2))
        return
    if not tags:
        click.echo(f"no tags at {endpoint} - a writer creates one: NdShArray('name', array, r_w='w')")
        return
    header = ["TAG", "DTYPE", "SHAPE", "SIZE", "WRITER", "READERS", "WRITES", "LAST WRITE", "GEN"]
    click.echo(_table(header, [_row(t) for t in tags]))


@main.group("daemon")
def daemon_group() -> None:
    """Start, stop or check the daemon (it also starts by itself when a client needs it)."""


@daemon_group.command("status")
@click.pass_obj
def daemon_status(endpoint: str) -> None:
    """Exit 0 and print the daemon's pid if it runs; exit 1 if not."""
    pid = daemon_pid(endpoint)
    if pid is None:
        raise click.ClickException(f"no daemon serves {endpoint}")
    stats = daemon_stats(endpoint)
    click.echo(f"ndsharrayd pid {pid} serving {endpoint}: {stats['tags']} tag(s), "
               f"{_size(stats['bytes'])} in segments, up {stats['uptime_s']:.0f} s")


@daemon_group.command("start")
@click.pass_obj
def daemon_start(endpoint: str) -> None:
    """Start a detached daemon unless one already runs."""
    start_daemon(endpoint)
    click.echo(f"ndsharrayd pid {daemon_pid(endpoint)} serving {endpoint}")


@daemon_group.command("stop")
@click.pass_obj
def daemon_stop(endpoint: str) -> None:
    """Stop the daemon; it removes every segment and its socket first."""
    pid = stop_daemon(endpoint)
    click.echo(f"stopped ndsharrayd pid {pid}" if pid else f"no daemon was serving {endpoint}")
