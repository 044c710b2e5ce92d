"""The ``ndsharray`` command: thin wrappers over library calls (the admin API), one per
command.

Exit codes: 0 ok, 1 operational error (one line on stderr), 2 usage error. A traceback is
a bug of ndsharray: please report it.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

import click

from . import config
from ._version import __version__
from .bridge import cli as bridge_cli
from .commands.daemon import daemon_group, doctor
from .commands.frames import record_cmd, replay_cmd, show
from .commands.tags import info, ls, rm
from .errors import NdShArrayError, UsageError
from .web.command import serve as serve_cmd  # (the web libraries load only when it runs)


def _silence(*streams: Any) -> None:
    """Point the streams' file descriptors at /dev/null (where they have one)."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in streams:
            try:
                os.dup2(null, stream.fileno())
            except (OSError, ValueError):  # no fd (a test runner's stream), or closed
                pass
    finally:
        os.close(null)


_PROTOCOL_WORDING = re.compile(r"^op '\w+': field '(\w+)': ")


def _user_terms(exc: Exception) -> str:
    """An error message without the protocol's wording (``op 'remove': field 'tag': ...``)."""
    return _PROTOCOL_WORDING.sub(lambda m: f"invalid {m.group(1)}: ", str(exc))


class _Cli(click.Group):
    """Library errors become one line in one place: the library's usage errors exit 2, its
    operational errors 1. Anything else (a KeyError, a ValueError from inside) is a bug of
    ndsharray, not the user's: it goes up with its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `ndsharray ls | head`: the reader went away. Stop quietly, as C tools do
            # (exit 141, as if killed by SIGPIPE), and keep Python's exit flush from failing.
            _silence(sys.stdout, sys.stderr)
            sys.exit(128 + signal.SIGPIPE)
        except UsageError as exc:  # a bad tag, file or value given: exit 2
            raise click.UsageError(str(exc), ctx) from None
        except (NdShArrayError, OSError, TimeoutError, ImportError) as exc:  # operational: exit 1
            raise click.ClickException(_user_terms(exc)) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", envvar=config.ENV_ENDPOINT, default=None,
              help="The daemon's ZeroMQ endpoint (default: this user's daemon).")
@click.version_option(__version__, prog_name="ndsharray")
@click.pass_context
def main(ctx: click.Context, endpoint: str | None) -> None:
    """Share numpy arrays between processes by tag."""
    ctx.obj = config.resolve_endpoint(endpoint)


main.add_command(ls)
main.add_command(info)
main.add_command(rm)
main.add_command(show)
main.add_command(record_cmd)
main.add_command(replay_cmd)
main.add_command(doctor)
main.add_command(daemon_group)
main.add_command(bridge_cli.bridge)
main.add_command(serve_cmd)
