"""ndsharray serve through an HTTP and a WebSocket client: a real server process, real
writers in other processes, the real daemon."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from arrays import digest, make_array
from conftest import Daemon, wait_until
from PIL import Image
from serving import Server
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

import ndsharray

# Figures that move between two looks at the daemon (a write's age, the rate).
MOVING = ("last_write_age_s", "rate_hz")


@pytest.fixture
def server(daemon: Daemon) -> Iterator[Server]:
    with Server(daemon.endpoint) as s:
        yield s


def cli_json(endpoint: str, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-m", "ndsharray", "--endpoint", endpoint, *args, "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def steady(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in MOVING}


def next_frame(ws: ClientConnection, timeout: float = 10) -> tuple[dict[str, Any], bytes | None]:
    """The next frame message: its JSON header, then its JPEG bytes if it is an image."""
    while True:
        msg = json.loads(ws.recv(timeout=timeout))
        if msg["type"] == "frame":
            break
    image = ws.recv(timeout=timeout) if msg["image"] else None
    assert image is None or isinstance(image, bytes)
    return msg, image


def test_api_tags_and_tag_are_exactly_ls_and_info_json(daemon: Daemon, server: Server, puppets: Any) -> None:
    w = puppets()
    w.start_writer("cam/left", "uint8", [48, 64, 3], seed=1)
    w(op="open", name="v", tag="imu", rw="w")
    w(op="put", name="v", dtype="float64", value=[1.0, 2.5, -3.0])
    with server.client() as c:
        api = c.get("/api/tags").json()
        ls = cli_json(daemon.endpoint, "ls")
        assert [t["tag"] for t in api] == ["cam/left", "imu"]
        assert [sorted(t) for t in api] == [sorted(t) for t in ls]  # the same fields, no more
        assert [steady(t) for t in api] == [steady(t) for t in ls]
        one = c.get("/api/tags/cam/left").json()
        info = cli_json(daemon.endpoint, "info", "cam/left")
        assert sorted(one) == sorted(info) and steady(one) == steady(info)
        assert one["shape"] == [48, 64, 3] and one["writer_pid"] == w.pid


def test_api_tags_and_ls_json_say_alike_why_a_bridge_closed_a_writer(daemon: Daemon, server: Server) -> None:
    from ndsharray.bridge.endings import EndingsFile

    # A tag whose last writer is this process, closed, and a reasons file in this process's
    # name: what an importing bridge leaves when a source writer closes (bridge/endings.py).
    ndsharray.NdShArray("ws/cam", np.zeros(4), "w", endpoint=daemon.endpoint).close()
    ended = EndingsFile("ws", daemon.endpoint)
    ended.write(lambda: {"ws/cam": "source writer on robot1 closed"})
    try:
        with server.client() as c:
            api, ls = c.get("/api/tags").json(), cli_json(daemon.endpoint, "ls")
            assert [steady(t) for t in api] == [steady(t) for t in ls]
            assert api[0]["writer_left_why"] == "source writer on robot1 closed"
            one, info = c.get("/api/tags/ws/cam").json(), cli_json(daemon.endpoint, "info", "ws/cam")
            assert steady(one) == steady(info) and one["writer_left_why"] == "source writer on robot1 closed"
    finally:
        ended.remove()


def test_api_refuses_what_it_should(server: Server) -> None:
    with server.client() as c:
        r = c.get("/api/tags/no/such/tag")
        assert r.status_code == 404 and "no tag 'no/such/tag'" in r.json()["error"]
        r = c.get("/api/tags/bad..tag%20name")
        assert r.status_code == 400 and "characters outside" in r.json()["error"]
        for method in ("POST", "PUT", "DELETE", "PATCH"):  # read-only: no rm, no writes
            r = c.request(method, "/api/tags/x")
            assert r.status_code == 405 and "read-only" in r.json()["error"]
        # Without a token, only a Host naming the loopback (no DNS rebinding).
        r = c.get("/api/tags", headers={"host": "attacker.example:80"})
        assert r.status_code == 403
        assert c.get("/api/tags", headers={"host": "localhost"}).status_code == 200


def test_frame_downloads(server: Server, puppets: Any) -> None:
    w = puppets()
    w.start_writer("data", "int16", [3, 5, 7], seed=7)
    w(op="open", name="img", tag="img", rw="w")
    w(op="put", name="img", dtype="uint8", shape=[20, 30, 3], value=[10, 20, 200])
    with server.client() as c:
        r = c.get("/api/tags/data/frame.npy")
        assert r.status_code == 200 and 'filename="data.npy"' in r.headers["content-disposition"]
        a = np.load(io.BytesIO(r.content), allow_pickle=False)
        assert a.dtype == np.int16 and digest(a) == digest(make_array("int16", (3, 5, 7), 7))
        r = c.get("/api/tags/img/frame.png")
        assert r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).getpixel((5, 5)) == (10, 20, 200)
        r = c.get("/api/tags/img/frame.png?bgr=1")  # OpenCV order: swapped to RGB
        assert Image.open(io.BytesIO(r.content)).getpixel((5, 5)) == (200, 20, 10)
        r = c.get("/api/tags/data/frame.png")  # not an image: say so, point to .npy
        assert r.status_code == 415 and "frame.npy" in r.json()["error"]
        assert c.get("/api/tags/nothing/frame.npy").status_code == 404


def test_tag_table_is_pushed(server: Server, puppets: Any) -> None:
    with server.client() as c, c.stream("GET", "/events/tags") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()
        first = json.loads(next(ln for ln in lines if ln.startswith("data: "))[6:])
        assert first["tags"] == [] and first["endpoint"]
        w = puppets()
        w.start_writer("pushed", "uint8", [2], seed=1)
        for ln in lines:  # no reload, no request: the server sends the new table
            if ln.startswith("data: ") and json.loads(ln[6:])["tags"]:
                assert json.loads(ln[6:])["tags"][0]["tag"] == "pushed"
                break


def test_slow_viewer_gets_the_latest_frame_never_a_queue(server: Server, puppets: Any) -> None:
    w = puppets()
    w(op="open", name="w", tag="cam", rw="w")
    w(op="put", name="w", dtype="uint8", shape=[32, 32], value=1)
    with connect(server.ws_url("cam"), open_timeout=10) as ws:
        head, jpeg = next_frame(ws)
        assert head["count"] == 1 and head["image"] and jpeg is not None and jpeg[:2] == b"\xff\xd8"
        # The viewer is a reader like any other: ls shows the server's pid reading it.
        info = wait_until(lambda: [t for t in ndsharray.list_tags() if t.tag == "cam" and t.readers], what="reader")
        assert info[0].reader_pids == (server.pid,)
        # This viewer does not say "ready": the writer goes on, the server reads the new
        # frames and encodes none of them, and sends nothing.
        for i in range(2, 22):
            w(op="put", name="w", dtype="uint8", shape=[32, 32], value=i)
        wait_until(lambda: server.figures()["cam"]["latest_count"] == 21, what="the server to read the last write")
        assert server.figures()["cam"]["encodes"] == 1
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.2)
        ws.send(json.dumps({"ready": True}))
        head, jpeg = next_frame(ws)
        assert head["count"] == 21 and head["stats"]["min"] == 21.0  # the newest, not frame 2
    # Nobody watches: the stream ends, its reader leaves.
    wait_until(lambda: server.figures() == {}, what="the stream to end")
    wait_until(lambda: not ndsharray.tag_info("cam").readers, what="the server's reader to leave")


def test_many_viewers_share_one_encode(server: Server, puppets: Any) -> None:
    w = puppets()
    w(op="open", name="w", tag="cam", rw="w")
    w(op="put", name="w", dtype="uint8", shape=[16, 16, 3], value=[1, 2, 3])
    with contextlib.ExitStack() as stack:
        viewers = [stack.enter_context(connect(server.ws_url("cam"), open_timeout=10)) for _ in range(3)]
        for count in (1, 2, 3):
            if count > 1:
                w(op="put", name="w", dtype="uint8", shape=[16, 16, 3], value=[count, 2, 3])
            got = [next_frame(ws) for ws in viewers]
            assert {h["count"] for h, _ in got} == {count}
            assert len({h["serial"] for h, _ in got}) == 1 and len({j for _, j in got}) == 1
            for ws in viewers:
                ws.send(json.dumps({"ready": True}))
        figures = server.figures()["cam"]
        assert figures["viewers"] == 3 and figures["encodes"] == 3


def test_non_image_frames_carry_statistics_and_values(server: Server, puppets: Any) -> None:
    w = puppets()
    w(op="open", name="w", tag="vec", rw="w")
    w(op="put", name="w", dtype="float32", value=[1.0, 2.0, 3.0, 4.0, 10.0, float("nan")])
    with connect(server.ws_url("vec"), open_timeout=10) as ws:
        head, image = next_frame(ws)
    assert image is None and not head["image"] and head["dtype"] == "float32"
    s = head["stats"]
    assert (s["min"], s["max"], s["mean"], s["nonfinite"]) == (1.0, 10.0, 4.0, 1)
    assert sum(s["hist"]) == 5 and len(s["hist"]) == 32
    assert head["values"]["rows"] == [["1", "2", "3", "4", "10", "nan"]]


def test_token_is_checked_on_every_request_and_stream(daemon: Daemon, puppets: Any) -> None:
    w = puppets()
    w.start_writer("cam", "uint8", [16, 16], seed=1)
    with Server(daemon.endpoint, bind="127.0.0.2:0") as s:  # not 127.0.0.1: a token is generated
        assert s.token is not None and len(s.token) >= 24
        bad = s.token[:-1] + ("x" if s.token[-1] != "x" else "y")
        with httpx.Client(base_url=s.base, timeout=10) as c:
            for path in ("/", "/api/tags", "/api/tags/cam", "/api/tags/cam/frame.npy", "/events/tags",
                         "/tag/cam", "/static/tag.js", "/api/serve"):
                assert c.get(path).status_code == 401, path
                assert c.get(path, headers={"authorization": f"Bearer {bad}"}).status_code == 401, path
                assert c.get(path, params={"token": bad}).status_code == 401, path
            assert c.get("/api/tags", headers={"authorization": f"Bearer {s.token}"}).status_code == 200
            assert c.get("/api/tags", params={"token": s.token}).status_code == 200
            # The printed URL: the token moves into a cookie and out of the address bar.
            r = c.get("/", params={"token": s.token})
            assert r.status_code == 303 and r.headers["location"] == "/"
            assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
            assert c.get("/api/tags").status_code == 200  # (the cookie)
            cookie = f"ndsharray_token={s.token}"
        ws_url = s.ws_url("cam")
        for headers in ({}, {"cookie": f"ndsharray_token={bad}"}):
            with pytest.raises(InvalidStatus), connect(ws_url, additional_headers=headers, open_timeout=10):
                pass
        with connect(ws_url, additional_headers={"cookie": cookie}, open_timeout=10) as ws:
            assert next_frame(ws)[0]["count"] == 1
        with connect(ws_url + "?token=" + s.token, open_timeout=10) as ws:
            assert next_frame(ws)[0]["count"] == 1
        # A page of another site may not open a WebSocket with the user's cookie.
        with pytest.raises(InvalidStatus), connect(ws_url, additional_headers={"cookie": cookie},
                                                   origin=Origin("http://attacker.example"), open_timeout=10):
            pass


def test_a_token_given_is_required_on_the_loopback_too(daemon: Daemon) -> None:
    with Server(daemon.endpoint, "--token", "s3cret-token-of-20c") as s:
        assert s.token == "s3cret-token-of-20c"
        with httpx.Client(base_url=s.base, timeout=10) as c:
            assert c.get("/api/tags").status_code == 401
        with s.client() as c:
            assert c.get("/api/tags").status_code == 200
    out = subprocess.run([sys.executable, "-m", "ndsharray", "--endpoint", daemon.endpoint, "serve",
                          "--token", "short"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "at least 16 characters" in out.stderr


def test_a_viewer_pins_no_more_than_a_reader_does(server: Server, puppets: Any) -> None:
    """While a frame is encoded (slow: a float frame is scaled first), the writer goes on;
    the encoder works on a copy, so the writer always finds a free slot of its 3 and never
    grows its ring (a new generation through the daemon: a slow write)."""
    w = puppets()
    w(op="open", name="w", tag="cam", rw="w", kw={"slots": 3})
    w(op="put", name="w", dtype="float32", shape=[480, 640, 3], value=[0.0, 0.5, 1.0])
    with contextlib.ExitStack() as stack:
        viewers = [stack.enter_context(connect(server.ws_url("cam") + q, open_timeout=10)) for q in ("", "?bgr=1")]
        i = 0
        deadline = time.monotonic() + 60
        # At least 40 writes, and on until a second frame was encoded (an encode can take
        # longer than 40 writes on a loaded machine).
        while i < 40 or server.figures()["cam"]["encodes"] < 2:
            assert time.monotonic() < deadline, "no second encode within 60 s"
            # Ready at once (the frames are not even read): writes come while frames are
            # being encoded (two pictures each: as is, and BGR).
            for ws in viewers:
                ws.send(json.dumps({"ready": True}))
            w(op="put", name="w", dtype="float32", shape=[480, 640, 3], value=[float(i), 0.5, 1.0])
            i += 1
    info = ndsharray.tag_info("cam")
    assert (info.slots, info.generation) == (3, 1)


OTHER_USER = """
import os, sys
import encodings.idna
import httpx
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
# Everything imported lazily is imported before the switch: the interpreter and its
# packages may live in a folder uid 65534 cannot read (a virtualenv in a 0700 mktemp -d).
client = httpx.Client(timeout=10)  # (builds its transport: imports httpcore, h11, ssl)
os.setgid(65534); os.setuid(65534)
base, ws_url = sys.argv[1], sys.argv[2]
print(client.get(base + "/api/tags").status_code)
try:
    with connect(ws_url, open_timeout=10):
        print("stream")
except InvalidStatus as exc:
    print(exc.response.status_code)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid (CI runs as root)")
def test_without_a_token_another_local_user_is_refused(server: Server, puppets: Any) -> None:
    """127.0.0.1 is open to every local user, the user's tags are not (the daemon's socket
    is 0700, the segments 0600): without a token, only the user's own sockets are served."""
    w = puppets()
    w.start_writer("cam", "uint8", [16, 16], seed=1)
    child = subprocess.run([sys.executable, "-c", OTHER_USER, server.base, server.ws_url("cam")],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["403", "403"]
    with server.client() as c:
        assert c.get("/api/tags").status_code == 200
    with connect(server.ws_url("cam"), open_timeout=10) as ws:
        assert next_frame(ws)[0]["count"] >= 1
    assert "cam" not in server.figures() or server.figures()["cam"]["viewers"] == 0


@pytest.mark.parametrize(("bind", "expected"), [
    ("127.0.0.1:9", ("127.0.0.1", 9)), ("localhost", ("localhost", 8765)), ("[::1]:0", ("::1", 0)),
    ("::1", ("::1", 8765)), ("::", ("::", 8765)), ("[::1]", ("::1", 8765))])
def test_bind_addresses_parse(bind: str, expected: tuple[str, int]) -> None:
    """--bind takes the loopback addresses its help names, IPv6 ones with or without brackets."""
    from ndsharray.web.command import _split_bind

    assert _split_bind(bind) == expected
