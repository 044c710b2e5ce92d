"""Who may ask the server anything: checked on every request and every stream.

- **Token** (required on any bind but 127.0.0.1, ::1 or localhost, or whenever ``--token``
  is given): from an ``Authorization: Bearer`` header, a ``?token=`` query (the printed
  URL; a page opened that way is redirected to the same URL without it and gets the token
  as an HttpOnly, SameSite=Strict cookie) or that cookie. Compared in constant time.
- **User** (without a token only): the loopback is open to every local user, the tags
  are not, so the connecting socket must be this user's or root's (:mod:`.peer`).
- **Host** (without a token only): the Host header must name the loopback, so a web page
  that re-points its own DNS name at 127.0.0.1 (DNS rebinding) cannot read the API.
- **Origin** (WebSocket): browsers let any site open a WebSocket to any address, so a
  WebSocket whose Origin is another site is refused (plain HTTP reads across sites are
  already stopped by the browser's same-origin rule).
- **Read-only**: only GET and HEAD; anything else is refused before it reaches a route.
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL, Headers, QueryParams
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from .peer import same_user

COOKIE = "ndsharray_token"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _hostname(netloc: str) -> str:
    """``host`` of ``host:port`` or ``[v6]:port``, lower case."""
    return (urlsplit("//" + netloc).hostname or "").lower()


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


class Guard:
    """ASGI middleware in front of the whole application (pages, API and streams)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is None and self.token is not None:
            query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
            if "token" in query and scope["type"] == "http" and _same(query["token"], self.token):
                if not scope["path"].startswith("/api/"):
                    await self._redirect_with_cookie(scope, query, send)
                    return
            elif not self._has_token(headers, query):
                refusal = (401, "missing or wrong access token: open the URL `ndsharray serve` printed "
                                "(it ends in ?token=...), or send 'Authorization: Bearer <token>'")
        if refusal is not None:
            await _refuse(scope, send, *refusal)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            return 405, "ndsharray serve is read-only: only GET and HEAD"
        host = headers.get("host", "")
        if self.token is None and _hostname(host) not in LOOPBACK_HOSTS:
            return 403, "this server answers on 127.0.0.1 only (see ndsharray serve --help)"
        if self.token is None and not same_user(scope.get("client"), scope.get("server")):
            return 403, ("without a token this server answers its own user's processes only: "
                         "its owner can restart it with --token and share that")
        origin = headers.get("origin")
        if scope["type"] == "websocket" and origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return 403, "a WebSocket from another site"
        return None

    def _has_token(self, headers: Headers, query: QueryParams) -> bool:
        assert self.token is not None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return _same(auth[7:].strip(), self.token)
        if "token" in query:
            return _same(query["token"], self.token)
        cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE)
        return cookie is not None and _same(cookie, self.token)

    async def _redirect_with_cookie(self, scope: Scope, query: QueryParams, send: Send) -> None:
        """The page URL with its token: keep the token in a cookie, drop it from the URL
        (out of the address bar, the history and any Referer)."""
        assert self.token is not None
        rest = urlencode([(k, v) for k, v in query.multi_items() if k != "token"])
        target = URL(scope=scope).replace(query=rest).path + (f"?{rest}" if rest else "")
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", target.encode()), (b"set-cookie", cookie.encode()),
            (b"cache-control", b"no-store"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def _refuse(scope: Scope, send: Send, status: int, why: str) -> None:
    if scope["type"] == "websocket":
        # Before the handshake is accepted: the client sees an HTTP error, no socket.
        await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
        return
    body = json.dumps({"error": why}).encode()
    extra: list[tuple[bytes, bytes]] = []
    if status == 401:
        extra.append((b"www-authenticate", b'Bearer realm="ndsharray"'))
    if status == 405:
        extra.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"), *extra]})
    await send({"type": "http.response.body", "body": body})


def loopback_only(host: str) -> bool:
    """True when binding ``host`` needs no token (the issue: 127.0.0.1, ::1, localhost)."""
    return host.strip("[]").lower() in LOOPBACK_HOSTS

