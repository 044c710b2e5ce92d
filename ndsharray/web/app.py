"""The Starlette application of ``ndsharray serve``: pages, JSON API, live streams.

Pages are static files: every tag name reaches the page as JSON and is put into it with
``textContent`` (never as HTML), so no name can become markup. The server builds no HTML.

- ``/``: the tag table; ``/tag/<tag>``: one tag's page.
- ``/api/tags``: ``ndsharray ls --json``'s objects; ``/api/tags/<tag>``: ``info --json``'s;
  ``/api/tags/<tag>/frame.npy`` and ``/frame.png`` (``?bgr=1``): the latest frame.
- ``/api/serve``: this server's streams (viewers, frames read, encodes) for scripts and
  the benchmark.
- ``/events/tags``: the tag table, pushed (Server-Sent Events) every ``TABLE_PERIOD``.
- ``/ws/tag/<tag>``: a tag's frames (WebSocket; see :mod:`.hub` for the flow control).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import admin
from ..client import NdShArray
from ..errors import TagNotFoundError
from ..protocol import check_tag
from . import frames
from .guard import Guard
from .hub import Hub, Subscriber, header_text

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TABLE_PERIOD = 0.3  # seconds between two pushes of the tag table (the issue: at least 1/s)
FRAME_WAIT = 2.0  # seconds a download waits for a first frame of a tag that has none yet
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; "
     b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class _SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every HTTP response (scripts only from this server)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, why: str) -> JSONResponse:
    return JSONResponse({"error": why}, status_code=status)


class TableFeed:
    """The tag table, read from the daemon once per period while anyone listens, and handed
    to every listener (latest value: a slow listener skips tables, never queues them)."""

    def __init__(self, endpoint: str, period: float = TABLE_PERIOD) -> None:
        self.endpoint = endpoint
        self.period = period
        self.text = ""
        self.version = 0
        self.listeners = 0
        self.closing = False
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def snapshot(self) -> dict[str, Any]:
        """What the table shows now (blocking: the daemon is asked)."""
        try:
            tags, notes = admin.list_tags_and_notes(self.endpoint)
        except Exception as exc:  # a daemon that runs but does not answer: say so on the page
            return {"tags": [], "error": str(exc), "endpoint": self.endpoint, "daemon": True}
        running = admin.daemon_running(self.endpoint)
        return {"tags": [t.as_json() for t in tags], "notes": notes, "endpoint": self.endpoint,
                "daemon": running, "time": time.time()}

    async def updates(self) -> AsyncIterator[str]:
        self.listeners += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        seen = 0
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: self.version != seen or self.closing)  # noqa: B023
                if self.closing:
                    return
                seen = self.version
                yield self.text
        finally:
            self.listeners -= 1

    async def close(self) -> None:
        """End every listener's stream (the server is stopping: it waits for open responses)."""
        async with self._changed:
            self.closing = True
            self._changed.notify_all()

    async def _run(self) -> None:
        try:
            while self.listeners:
                text = json.dumps(await run_in_threadpool(self.snapshot))
                async with self._changed:
                    self.text = text
                    self.version += 1
                    self._changed.notify_all()
                await asyncio.sleep(self.period)
        finally:
            self._task = None


def create_app(endpoint: str, token: str | None = None) -> Starlette:
    """The whole server for the daemon at ``endpoint``; ``token`` None: no token asked (the
    caller binds the loopback only)."""
    hub = Hub(endpoint)
    table = TableFeed(endpoint)

    async def page(request: Request) -> Response:
        name = "tag.html" if request.url.path.startswith("/tag/") else "index.html"
        return FileResponse(os.path.join(STATIC, name), media_type="text/html; charset=utf-8")

    async def api_tags(request: Request) -> Response:
        tags = await run_in_threadpool(admin.list_tags, endpoint)
        return JSONResponse([t.as_json() for t in tags])

    async def api_tag(request: Request) -> Response:
        rest: str = request.path_params["rest"]
        kind = next((k for k in ("npy", "png") if rest.endswith(f"/frame.{k}")), None)
        tag = rest[: -len("/frame.npy")] if kind else rest
        try:
            check_tag(tag)
        except ValueError as exc:
            return _error(400, str(exc))
        if kind is None:
            try:
                info = await run_in_threadpool(admin.tag_info, tag, endpoint)
            except TagNotFoundError as exc:
                return _error(404, str(exc))
            return JSONResponse(info.as_json())
        return await _frame_file(tag, kind, request.query_params.get("bgr") in ("1", "true"))

    async def _frame_file(tag: str, kind: str, bgr: bool) -> Response:
        a = hub.latest(tag)
        if a is not None:
            a = np.array(a)  # (a copy: the encoding below must not keep the writer's slot pinned)
        else:
            try:
                a = await run_in_threadpool(_read_one, endpoint, tag)
            except TagNotFoundError as exc:
                return _error(404, str(exc))
        if a is None:
            return _error(404, f"tag {tag!r} has no frame yet (waited {FRAME_WAIT:g} s)")
        try:
            body = await run_in_threadpool(frames.npy if kind == "npy" else lambda x: frames.png(x, bgr=bgr), a)
        except ValueError as exc:
            return _error(415, str(exc))
        name = tag.replace("/", "_") + "." + kind
        return Response(body, media_type="application/octet-stream" if kind == "npy" else "image/png",
                        headers={"content-disposition": f'attachment; filename="{name}"'})

    async def api_serve(request: Request) -> Response:
        return JSONResponse({"pid": os.getpid(), "endpoint": endpoint, "streams": hub.figures()})

    async def events_tags(request: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            async for text in table.updates():
                yield f"data: {text}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def ws_tag(websocket: WebSocket) -> None:
        tag = websocket.path_params["tag"]
        await websocket.accept()  # (then a refusal can say why: the page shows it)
        try:
            check_tag(tag)
        except ValueError as exc:
            await websocket.close(code=1008, reason=str(exc)[:120])
            return
        sub = Subscriber(bgr=websocket.query_params.get("bgr") in ("1", "true"))
        stream = hub.subscribe(tag, sub)

        async def send() -> None:
            while True:
                await sub.wake.wait()
                sub.wake.clear()
                if sub.status is not None:
                    msg, sub.status = sub.status, None
                    await websocket.send_text(json.dumps(msg))
                got = sub.take()
                if got is not None:
                    enc, image = got
                    await websocket.send_text(header_text(enc, sub.bgr))
                    if image is not None:
                        await websocket.send_bytes(image)

        async def receive() -> None:
            while True:
                try:
                    msg = json.loads(await websocket.receive_text())
                except WebSocketDisconnect:
                    return
                except (ValueError, KeyError):
                    continue  # not JSON text: ignore it
                if isinstance(msg, dict) and msg.get("ready"):
                    bgr = msg.get("bgr")
                    stream.ready(sub, bgr if isinstance(bgr, bool) else None)

        tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            stream.remove(sub)
            with contextlib.suppress(Exception):
                await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(hub.close)

    routes = [
        Route("/", page),
        Route("/tag/{tag:path}", page),
        Route("/api/tags", api_tags),
        Route("/api/tags/{rest:path}", api_tag),
        Route("/api/serve", api_serve),
        Route("/events/tags", events_tags),
        WebSocketRoute("/ws/tag/{tag:path}", ws_tag),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(Guard, token=token), Middleware(_SecurityHeaders)])
    app.state.hub = hub
    app.state.table = table
    return app


def _read_one(endpoint: str, tag: str) -> np.ndarray[Any, Any] | None:
    """The latest frame of ``tag`` through a short-lived reader; raises TagNotFoundError
    for a tag the daemon does not know (so no reader waits for a tag that never comes)."""
    admin.tag_info(tag, endpoint)
    with NdShArray(tag, r_w="r", endpoint=endpoint) as r:
        ok, a = r.read(copy=True, timeout=FRAME_WAIT)
    return a if ok else None
