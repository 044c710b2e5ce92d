"""ndsharray serve in a real headless browser: Debian's chromium driven by Playwright (its
own browser download is never used), a real server process and real writer processes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import Daemon, wait_until
from PIL import Image
from serving import Server

CHROMIUM = os.environ.get("NDSHARRAY_CHROMIUM", "/usr/bin/chromium")
# Where test_solid_colour_frames_show_in_a_screenshot leaves the README's picture, if asked.
SCREENSHOT = os.environ.get("NDSHARRAY_SCREENSHOT")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        why = f"no {CHROMIUM}: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs it: never skip the browser tests there
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 960, "height": 640})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()


@pytest.fixture
def server(daemon: Daemon) -> Iterator[Server]:
    with Server(daemon.endpoint) as s:
        yield s


def colour_at(page: Any, fx: float = 0.5, fy: float = 0.5) -> tuple[int, int, int]:
    """The colour of the live picture at (fx, fy) of its width and height, from a screenshot."""
    shot = Image.open(io.BytesIO(page.locator("#frame").screenshot())).convert("RGB")
    px = shot.getpixel((int(shot.width * fx), int(shot.height * fy)))
    assert isinstance(px, tuple)
    return px[0], px[1], px[2]


def centre(page: Any) -> tuple[int, int, int]:
    return colour_at(page)


def near(got: tuple[int, int, int], want: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(g - w) <= tol for g, w in zip(got, want, strict=True))


def test_table_lists_a_tag_within_a_second_and_drops_it_after_rm(daemon: Daemon, server: Server,
                                                                   page: Any, puppets: Any) -> None:
    page.goto(server.url)
    empty = page.locator("#empty")
    empty.wait_for(state="visible", timeout=10_000)
    assert "No tags yet" in empty.inner_text() and daemon.endpoint in empty.inner_text()
    w = puppets()
    w(op="open", name="w", tag="cam/left", rw="w")
    w(op="put", name="w", dtype="uint8", shape=[4, 4], value=1)
    written = time.monotonic()
    row = page.locator('#tags tr[data-tag="cam/left"]')
    row.wait_for(timeout=10_000)
    assert time.monotonic() - written < 1.0, "the table showed the new tag more than a second after its write"
    cells = row.locator("td").all_inner_texts()
    assert cells[:3] == ["cam/left", "uint8", "4x4"] and cells[4] == f"pid {w.pid} (alive)"
    subprocess.run([sys.executable, "-m", "ndsharray", "--endpoint", daemon.endpoint, "rm", "cam/left"],
                   check=True, capture_output=True, timeout=60)
    row.wait_for(state="detached", timeout=10_000)
    empty.wait_for(state="visible", timeout=10_000)


def test_solid_colour_frames_show_in_a_screenshot(server: Server, page: Any, puppets: Any) -> None:
    w = puppets()
    w(op="open", name="w", tag="cam", rw="w")
    page.goto(server.base + "/tag/cam")
    for colour in ((255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 250, 40)):
        w(op="put", name="w", dtype="uint8", shape=[90, 120, 3], value=list(colour))
        wait_until(lambda c=colour: page.locator("#frame").is_visible() and near(centre(page), c),
                   timeout=10, what=f"the page to show {colour}")
    # OpenCV's order: the same frame read as BGR shows blue and red swapped.
    page.locator("#bgr").check()
    wait_until(lambda: near(centre(page), (40, 250, 250)), timeout=10, what="the BGR toggle to swap channels")
    assert "90x120x3" in page.locator("#s-shape").inner_text()
    if SCREENSHOT:  # the README's picture: a gradient, as a camera would show something
        y, x = np.mgrid[0:120, 0:200]
        frame = np.stack([x * 255 // 199, y * 255 // 119, 255 - x * 255 // 199], axis=-1)
        w(op="put", name="w", dtype="uint8", value=frame.tolist())
        wait_until(lambda: near(colour_at(page, 0.01, 0.01), (255, 0, 0)), timeout=10, what="the gradient")
        page.locator("#bgr").uncheck()
        wait_until(lambda: near(colour_at(page, 0.01, 0.01), (0, 0, 255)), timeout=10, what="the gradient in RGB")
        page.screenshot(path=SCREENSHOT)


def test_grey_uint16_and_float_frames_play(server: Server, page: Any, puppets: Any) -> None:
    w = puppets()
    w(op="open", name="w", tag="depth", rw="w")
    page.goto(server.base + "/tag/depth")
    # Scaled from its min..max: the lower half of the values shows black, the upper white.
    w(op="put", name="w", dtype="uint16", shape=[64, 64], value=[[1000] * 64] * 32 + [[3000] * 64] * 32)
    wait_until(lambda: page.locator("#frame").is_visible() and near(colour_at(page, 0.5, 0.2), (0, 0, 0))
               and near(colour_at(page, 0.5, 0.8), (255, 255, 255)), timeout=10, what="the uint16 frame")
    w(op="put", name="w", dtype="float32", shape=[64, 64], value=[[0.5] * 64] * 32 + [[-2.0] * 64] * 32)
    wait_until(lambda: near(colour_at(page, 0.5, 0.2), (255, 255, 255)) and near(colour_at(page, 0.5, 0.8), (0, 0, 0))
               and page.locator("#s-dtype").inner_text() == "float32", timeout=10, what="the float frame")


def test_non_image_array_shows_its_statistics(server: Server, page: Any, puppets: Any) -> None:
    w = puppets()
    w(op="open", name="w", tag="imu/accel", rw="w")
    w(op="put", name="w", dtype="float64", value=[1.0, 2.0, 3.0, 4.0, 10.0])
    page.goto(server.base + "/tag/imu/accel")
    page.locator("#s-mean").filter(has_text="4").wait_for(timeout=10_000)
    assert [page.locator(f"#s-{k}").inner_text() for k in ("shape", "dtype", "min", "max", "mean")] == [
        "5", "float64", "1", "10", "4"]
    assert page.locator("#values td").all_inner_texts() == ["1", "2", "3", "4", "10"]
    assert page.locator("#hist-range").inner_text() == "histogram 1 … 10"
    assert not page.locator("#picture").is_visible() and not page.locator("#png").is_visible()
    assert page.locator("#npy").get_attribute("href") == "/api/tags/imu/accel/frame.npy"
    w(op="put", name="w", dtype="float64", value=[-7.5, 0.0, 0.0, 0.0, 0.0])  # live: the next frame
    page.locator("#s-min").filter(has_text="-7.5").wait_for(timeout=10_000)


def test_markup_in_tag_names_renders_as_text(server: Server, page: Any, puppets: Any) -> None:
    # The tag rules allow no '<' or '"', but a name can still look like code or an attribute.
    tags = ["javascript:alert", "x/onerror=alert:1/+@-"]
    w = puppets()
    for i, tag in enumerate(tags):
        w(op="open", name=str(i), tag=tag, rw="w")
        w(op="put", name=str(i), dtype="uint8", shape=[2], value=i)
    page.goto(server.url)
    page.locator("#tags tbody tr").nth(1).wait_for(timeout=10_000)
    links = page.locator("#tags tbody a")
    assert links.all_inner_texts() == sorted(tags)
    assert [links.nth(i).get_attribute("href") for i in range(2)] == [
        "/tag/javascript%3Aalert", "/tag/x/onerror%3Dalert%3A1/%2B%40-"]
    # A crafted link to a tag page: the name in the URL is shown as text, never run.
    for markup in ("<script>alert(1)</script>", '<img src=x onerror="alert(2)">'):
        page.goto(server.base + "/tag/" + markup)
        assert page.locator("#tag").inner_text() == markup
        assert page.locator("script").count() == 2 and page.locator("main img").count() == 1
        refused = page.locator("#status").filter(has_text="refused: tag")  # the server said why, as text
        refused.wait_for(timeout=10_000)
        assert markup in refused.inner_text()
    assert page.dialogs == []


def test_token_in_the_browser(daemon: Daemon, page: Any, puppets: Any) -> None:
    w = puppets()
    w(op="open", name="w", tag="cam", rw="w")
    w(op="put", name="w", dtype="uint8", shape=[32, 32, 3], value=[0, 0, 255])
    with Server(daemon.endpoint, bind="127.0.0.2:0") as s:
        assert s.token
        assert page.goto(s.base + "/").status == 401
        assert page.goto(s.base + "/?token=wrong-" + s.token).status == 401
        assert page.goto(s.url).status == 200
        assert page.url == s.base + "/"  # the token left the address bar (it is a cookie now)
        page.locator('#tags tr[data-tag="cam"]').wait_for(timeout=10_000)
        page.goto(s.base + "/tag/cam")
        wait_until(lambda: page.locator("#frame").is_visible() and near(centre(page), (0, 0, 255)), timeout=10,
                   what="frames over the WebSocket, with the cookie")


def test_without_a_daemon_the_page_says_so_and_starts_none(folder: str, page: Any) -> None:
    endpoint = f"ipc://{folder}/none.sock"
    with Server(endpoint) as s:
        page.goto(s.url)
        empty = page.locator("#empty").filter(has_text="no ndsharrayd runs")
        empty.wait_for(timeout=10_000)
        assert endpoint in empty.inner_text() and "The first writer starts one" in empty.inner_text()
        with s.client() as c:
            assert c.get("/api/tags").json() == [] and c.get("/api/tags/cam").status_code == 404
    assert not os.path.exists(f"{folder}/none.sock")  # looking started no daemon
