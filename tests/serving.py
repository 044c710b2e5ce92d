"""A real ``ndsharray serve`` subprocess for the web tests (tests/test_web_*.py)."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
from typing import Any

import httpx


class Server:
    """``python -m ndsharray serve`` on ``bind`` (port 0: a free one) for ``endpoint``;
    ``url`` is the URL it printed (with ``?token=`` when it asks for one)."""

    def __init__(self, endpoint: str, *args: str, bind: str = "127.0.0.1:0") -> None:
        self.stderr = ""  # what it printed there, once stopped
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ndsharray", "--endpoint", endpoint, "serve", "--bind", bind, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        found = re.search(r"(http://\S+)", line)
        if not found:
            self.stop()
            raise AssertionError(f"ndsharray serve printed no URL: {line!r} {self.stderr}")
        self.url = found.group(1)
        self.token = self.url.split("?token=")[1] if "?token=" in self.url else None
        self.base = self.url.split("?")[0].rstrip("/")
        self.pid = self.proc.pid
        self.stderr = ""

    def client(self, **kw: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=10, **kw)

    def ws_url(self, tag: str) -> str:
        return self.base.replace("http://", "ws://") + "/ws/tag/" + tag

    def figures(self) -> dict[str, Any]:
        with self.client() as c:
            out: dict[str, Any] = c.get("/api/serve").json()["streams"]
            return out

    def stop(self) -> None:
        """SIGTERM, as Ctrl-C would; the server must end by itself and say nothing alarming."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("ndsharray serve did not stop within 15 s of SIGTERM") from None
        assert self.proc.stderr is not None and self.proc.stdout is not None
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        self.proc.stdout.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        assert "Traceback" not in self.stderr, self.stderr

