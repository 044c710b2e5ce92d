"""``ndsharray daemon status|start|stop`` and ``ndsharray doctor``: the daemon, and what is
wrong with the machine it needs."""

from __future__ import annotations

import click

from ..admin import daemon_pid, daemon_stats, start_daemon, stop_daemon
from ..doctor import run_checks
from ..units import format_size as _size


@click.command("doctor")
@click.pass_obj
def doctor(endpoint: str) -> None:
    """Check the daemon, /dev/shm, logind and permissions; say what to fix."""
    checks = run_checks(endpoint)
    for c in checks:
        click.echo(f"{c.level:<4}  {c.what:<9}  {c.message}")
    if any(c.level == "FAIL" for c in checks):
        raise SystemExit(1)


@click.group("daemon")
def daemon_group() -> None:
    """Start, stop or check the daemon (it also starts by itself when a client needs it)."""


@daemon_group.command("status")
@click.pass_obj
def daemon_status(endpoint: str) -> None:
    """Exit 0 and describe the daemon if it runs; exit 1 if not."""
    pid = daemon_pid(endpoint)
    if pid is None:
        raise click.ClickException(f"no daemon serves {endpoint}")
    stats = daemon_stats(endpoint)
    click.echo(f"ndsharrayd pid {pid} serving {endpoint}: {stats.tags} tag(s), "
               f"{_size(stats.bytes)} in segments, up {stats.uptime_s:.0f} s")


@daemon_group.command("start")
@click.pass_obj
def daemon_start(endpoint: str) -> None:
    """Start a detached daemon unless one already runs."""
    click.echo(f"ndsharrayd pid {start_daemon(endpoint)} serving {endpoint}")


@daemon_group.command("stop")
@click.pass_obj
def daemon_stop(endpoint: str) -> None:
    """Stop the daemon; it removes every segment and its socket first."""
    pid = stop_daemon(endpoint)
    click.echo(f"stopped ndsharrayd pid {pid}" if pid else f"no daemon was serving {endpoint}")
