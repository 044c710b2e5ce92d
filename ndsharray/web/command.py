"""The ``ndsharray serve`` command (registered in cli.py); the web libraries are imported
only when it runs, so the rest of the CLI works without the ``web`` extra."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
from typing import Any

import click

DEFAULT_BIND = "127.0.0.1:8765"


def _split_bind(bind: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` or ``v6`` (default port) -> (host, port)."""
    host, sep, port = bind.rpartition(":")
    bare_v6 = bind.count(":") > 1 and not bind.startswith("[")  # "::1": an address, no port
    if not sep or bare_v6 or (host.startswith("[") != host.endswith("]")) or ("]" in port):
        host, port = bind, DEFAULT_BIND.rsplit(":", 1)[1]
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8765 or [::1]:8765",
                                 param_hint="--bind")
    return host, int(port)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one), before uvicorn starts,
    so the URL printed names the real port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}"
                                   + (" (another ndsharray serve? pick another --bind port)"
                                      if exc.errno == 98 else "")) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@click.command("serve")
@click.option("--bind", default=DEFAULT_BIND, show_default=True, metavar="HOST:PORT",
              help="Address to listen on. Anything but 127.0.0.1, ::1 or localhost needs an access token.")
@click.option("--token", default=None, envvar="NDSHARRAY_SERVE_TOKEN",
              help="The access token to require (default: a random one when --bind is not the loopback).")
@click.pass_obj
def serve(endpoint: str, bind: str, token: str | None) -> None:
    """A live web page of every tag and its frames (needs ndsharray[web])."""
    try:
        import uvicorn

        from .app import create_app
        from .guard import loopback_only
    except ImportError as exc:
        raise click.ClickException(f"ndsharray serve needs the web extra: pip install 'ndsharray[web]' ({exc})") \
            from None
    host, port = _split_bind(bind)
    if token is not None and len(token) < 16:
        raise click.BadParameter("use at least 16 characters (or leave it out: one is generated)",
                                 param_hint="--token")
    if token is None and not loopback_only(host):
        token = secrets.token_urlsafe(24)
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    click.echo(f"ndsharray serve: {url}  (tags of {endpoint}; Ctrl-C to stop)")
    if token:
        click.echo("anyone with this URL can watch every tag: share it as you would a password", err=True)
    sys.stdout.flush()
    app = create_app(endpoint, token)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # uvicorn waits for open responses before it stops: end the endless ones (the
            # pushed tag tables) first. (A signal handler: hand it to the loop.)
            with contextlib.suppress(RuntimeError):  # no loop runs (yet, or any more)
                loop = asyncio.get_running_loop()

                def end_tables() -> None:
                    app.state.closing = loop.create_task(app.state.table.close())  # (a reference)

                loop.call_soon_threadsafe(end_tables)
            super().handle_exit(sig, frame)

    # proxy_headers off: no proxy stands in front, and the guard needs the real peer address.
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="on",
                            timeout_graceful_shutdown=5, proxy_headers=False)
    Server(config).run(sockets=[sock])
