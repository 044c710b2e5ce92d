"""``ndsharrayd`` / ``python -m ndsharrayd``: run the registry daemon.

Foreground by default (for systemd and debugging), logging to stderr. ``--detach`` forks a
session-less daemon and returns once it serves (or says why it could not): clients use it
to auto-start one.
"""

from __future__ import annotations

import grp
import logging
import os
import sys
from typing import TextIO

import click

from ndsharray import config, framecopy, safefs
from ndsharray._version import __version__
from ndsharray.daemonctl import AlreadyRunning
from ndsharray.errors import UnsafeFileError
from ndsharray.units import parse_size

from . import logfile
from .server import Daemon


def _byte_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if n < 1:
        raise click.BadParameter(f"{value!r} is less than one byte")
    return n


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar=config.ENV_ENDPOINT, default=None,
              help="ZeroMQ endpoint to serve (default: ipc socket in this user's runtime folder).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--orphan-ttl", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds a tag with no writer and no readers is kept before removal.")
@click.option("--max-bytes", default=None, metavar="SIZE", callback=_byte_size,
              help="Quota on all segments together: bytes, or with a suffix: K, M, G, T are "
                   "powers of 1000 (50M = 50,000,000), KiB, MiB, GiB, TiB powers of 1024 "
                   "(default: what /dev/shm holds).")
@click.option("--max-tags", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Most tags the daemon holds at once.")
@click.option("--max-clients", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Most open writer and reader handles over all tags.")
@click.option("--group", default=None,
              help="Share segments (0660) and the socket with this group; the endpoint's folder "
                   "must be group-accessible too. Default: this user only (0600, folder 0700).")
@click.option("--detach", is_flag=True, help="Run in the background; return once serving.")
@click.option("--keep-log", is_flag=True, envvar="NDSHARRAY_KEEP_LOG",
              help="With --detach: keep the log file (<socket>.log) after a clean stop; by "
                   "default a clean stop removes it.")
@click.option("--log-max-bytes", default="1MiB", show_default=True, metavar="SIZE", callback=_byte_size,
              help="With --detach: past this size the log file moves to <socket>.log.1 (one "
                   "kept) and a new one starts.")
@click.version_option(__version__, prog_name="ndsharrayd")
def main(endpoint: str | None, log_level: str, orphan_ttl: float, max_bytes: int | None,
         max_tags: int, max_clients: int, group: str | None, detach: bool, keep_log: bool,
         log_max_bytes: int) -> None:
    """The ndsharray registry daemon: maps tags to shared-memory segments."""
    endpoint = config.resolve_endpoint(endpoint)
    try:  # (read again at each generation: refuse a bad value now, not as a writer's error)
        framecopy.skew_from()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            if not group.isdigit():  # (a client restarting a group daemon passes its gid)
                raise click.BadParameter(f"no group named {group!r}", param_hint="--group") from None
            gid = int(group)
    daemon = Daemon(endpoint, orphan_ttl=orphan_ttl, max_bytes=max_bytes, max_tags=max_tags,
                    max_clients=max_clients, group=gid)
    if detach:
        _detach(daemon, log_level, keep_log, log_max_bytes)
        return
    _log_to_stderr(log_level)
    try:
        daemon.serve()
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc} ({endpoint}); stop it first or use another --endpoint") from None
    except UnsafeFileError as exc:
        raise click.ClickException(str(exc)) from None


# Control characters (a newline above all) escaped in every message: names of files in
# /dev/shm are anybody's text, and one holding "\n<shell code>" must never start a line of
# a log someone may paste or source.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


class _OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPES)


def _log_to_stderr(log_level: str, handler: logging.StreamHandler[TextIO] | None = None) -> None:
    handler = handler or logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("%(asctime)s ndsharrayd[%(process)d] %(levelname)s %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler])


def _detach(daemon: Daemon, log_level: str, keep_log: bool = False,
            log_max_bytes: int = logfile.DEFAULT_MAX_BYTES) -> None:
    """Fork before any zmq exists; the parent waits for the child's first word on a pipe."""
    r, w = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            word = pipe.read().decode(errors="replace")
        if word == "ok":
            return
        if not word:  # died without a word: killed (OOM killer, a signal) while starting
            try:
                code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
            except ChildProcessError:  # SIGCHLD ignored (inherited): the status is gone
                code = 0
            if code < 0:
                click.echo(f"ndsharrayd: the daemon was killed by signal {-code} before it was "
                           f"ready; see {config.log_path(daemon.endpoint)}", err=True)
                sys.exit(config.EXIT_DAEMON_KILLED_STARTING)
        raise click.ClickException(word or "the daemon exited before it was ready; see "
                                   + config.log_path(daemon.endpoint))
    os.close(r)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        # Beside the socket, where others (a --group's members) may write: never follow a
        # link there, nor append to a file that is not our own (a hard link to ~/.bashrc).
        logf = safefs.open_checked(config.log_path(daemon.endpoint), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as exc:
        os.write(w, f"cannot open the daemon's log: {exc}".encode())
        os._exit(1)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(logf, 2)
    os.close(null)
    os.close(logf)
    _log_to_stderr(log_level, logfile.RotatingStderr(config.log_path(daemon.endpoint), log_max_bytes))

    def ready(word: str) -> None:
        os.write(w, word.encode())
        os.close(w)

    code = 0
    try:
        daemon.serve(ready)
        if not keep_log:  # a clean stop: nothing in it anyone needs (a failure keeps it)
            logfile.remove(config.log_path(daemon.endpoint))
    except AlreadyRunning as exc:
        ready(f"{exc} ({daemon.endpoint})")
        code = 3
    except UnsafeFileError as exc:
        ready(str(exc))
        code = 1
    except BaseException as exc:
        logging.getLogger("ndsharrayd").exception("daemon failed")
        try:
            ready(f"daemon failed: {exc!r}")
        except OSError:
            pass
        code = 1
    os._exit(code)


if __name__ == "__main__":
    main()
