"""The viewer's page in a real browser: Debian's headless Chromium driven by Playwright for Python.

The test starts the server on 127.0.0.1 (a free port) and stops it; every wait is bounded. It is skipped,
with the reason, only where Chromium or Playwright is missing (``.ci/run`` installs Chromium and says so).
``NAIC_SEG_VIEWER_SCREENSHOT=docs/viewer.png`` also writes its screenshot there.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from naic_seg.core.labels import PALETTE
from naic_seg.viewer import create_app
from naic_seg.viewer.server import running
from tests.viewer.conftest import CLASSES, IMAGE_COLOURS, block_centres
from tests.viewer.test_app import lonlat

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("NAIC_SEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 20_000
VIEWPORT = {"width": 1280, "height": 860}


def why_no_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; NAIC_SEG_CHROMIUM names another)"
    return None


@pytest.fixture
def page(viewer_data):
    """A page on a server the test started, and every URL the page asked for."""
    reason = why_no_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    requested: list[str] = []
    errors: list[str] = []
    with running(create_app(viewer_data.index())) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            page.set_default_timeout(TIMEOUT_MS)
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda err: errors.append(f"script error: {err}"))
            page.on("console", lambda msg: msg.type == "error" and errors.append(f"console: {msg.text}"))
            page.goto(url)
            yield page, url, requested, errors
        finally:
            browser.close()


def wait_for_tiles(page) -> None:
    page.wait_for_selector("body[data-ready='true'][data-tiles='loaded']", state="attached")


def screen_rgb(page, lon: float, lat: float) -> np.ndarray:
    """The screenshot's colour at a longitude and latitude (3 x 3 pixels, averaged)."""
    x, y = screen_xy(page, lon, lat)
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"), dtype=np.float64)
    return shot[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0)


def screen_xy(page, lon: float, lat: float) -> tuple[int, int]:
    return tuple(
        page.evaluate(
            """([lat, lon]) => {
                const p = viewer.map.latLngToContainerPoint([lat, lon]);
                const box = document.getElementById("map").getBoundingClientRect();
                return [Math.round(box.left + p.x), Math.round(box.top + p.y)];
            }""",
            [lat, lon],
        )
    )


def map_layer_opacity(page) -> float:
    return float(
        page.evaluate(
            "getComputedStyle(document.querySelector('.leaflet-landcover-pane .leaflet-layer')).opacity"
        )
    )


def check_the_lists(page) -> None:
    rows = page.locator("#legend tbody tr").evaluate_all("rows => rows.map(r => r.dataset.class)")
    assert rows == list(CLASSES.names), "the legend lists every class"
    assert page.locator("#scene-list .name").all_inner_texts() == ["blocks", "geo", "scene_0"]
    first = page.locator("#scene-list button").first.inner_text()
    assert "256 × 256 px · 2.00 m pixels · EPSG:32650" in first and "mIoU 0.896 · FWIoU 0.900" in first
    assert page.locator("#row-confidence").is_hidden() and page.locator("#row-image").is_visible()


def check_the_map_over_the_imagery(page) -> dict[int, tuple[float, float]]:
    """At 100 % the screen shows each block's class colour; at 30 % the imagery shows through; without
    the land-cover layer, the imagery alone."""
    assert map_layer_opacity(page) == pytest.approx(0.7)
    page.locator("#opacity").focus()
    page.keyboard.press("End")  # the slider to 100 %
    assert map_layer_opacity(page) == pytest.approx(1.0)
    centres = {i: lonlat("blocks", *rc) for i, rc in block_centres().items()}
    for index, (lon, lat) in centres.items():
        assert np.abs(screen_rgb(page, lon, lat) - PALETTE[index]).max() <= 2, f"class {index} on screen"
    for _ in range(70):
        page.keyboard.press("ArrowLeft")  # down to 30 %
    assert map_layer_opacity(page) == pytest.approx(0.3)
    assert page.locator("#opacity-value").inner_text() == "30 %"
    blend = 0.3 * PALETTE[5].astype(float) + 0.7 * IMAGE_COLOURS[5]
    assert np.abs(screen_rgb(page, *centres[5]) - blend).max() <= 3
    page.locator("#layer-map").uncheck()
    assert np.abs(screen_rgb(page, *centres[5]) - IMAGE_COLOURS[5]).max() <= 2
    page.locator("#layer-map").check()
    return centres


def take_the_screenshot(page, path: Path) -> None:
    """scene_0 (the Voronoi demo scene) at 60 % with a point read, as in docs/viewer.png."""
    page.locator("#scene-list button", has_text="scene_0").click()
    page.wait_for_function("viewer.state.scene.name === 'scene_0'")
    wait_for_tiles(page)
    page.locator("#opacity").focus()
    for _ in range(30):
        page.keyboard.press("ArrowRight")  # 30 % -> 60 %
    centre = page.evaluate("[viewer.map.getCenter().lng, viewer.map.getCenter().lat]")
    page.mouse.click(*screen_xy(page, *centre))
    page.wait_for_selector("#point .class", state="attached")
    page.screenshot(path=str(path))
    if os.environ.get("NAIC_SEG_VIEWER_SCREENSHOT"):
        Image.open(path).save(os.environ["NAIC_SEG_VIEWER_SCREENSHOT"], optimize=True)


def test_the_page_shows_the_map_over_the_imagery_with_legend_slider_and_clicks(page, tmp_path):
    page, url, requested, errors = page
    wait_for_tiles(page)
    check_the_lists(page)
    centres = check_the_map_over_the_imagery(page)

    page.mouse.click(*screen_xy(page, *centres[5]))
    page.wait_for_selector("#point[data-class='forest']", state="attached")
    assert "EPSG:32650" in page.locator("#point").inner_text()

    page.locator("#scene-list button", has_text="geo").click()
    page.wait_for_function("viewer.state.scene.name === 'geo'")
    assert page.locator("#row-confidence").is_visible(), "geo has a confidence COG"
    take_the_screenshot(page, tmp_path / "viewer.png")

    own = urlsplit(url).netloc
    tiles = [u for u in requested if "/tiles/" in u]
    assert len(tiles) >= 4 and any("/image/" in u for u in tiles)
    elsewhere = [u for u in requested if urlsplit(u).scheme != "data" and urlsplit(u).netloc != own]
    assert not elsewhere, f"the page asked other servers: {elsewhere}"
    assert not errors, errors
