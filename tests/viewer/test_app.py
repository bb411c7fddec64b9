"""The viewer's server without a browser: FastAPI's TestClient on the synthetic scenes of conftest.py."""

from __future__ import annotations

import ast
import http.client
import io
import re
from pathlib import Path
from urllib.parse import urlsplit

import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.warp import transform, transform_bounds

import naic_seg.viewer
from naic_seg.core.labels import PALETTE
from naic_seg.viewer import SceneIndex, create_app
from naic_seg.viewer.server import running
from tests.conftest import PROJECT_ROOT
from tests.viewer.conftest import (
    CLASSES,
    GEO_ORIGIN,
    GEO_PIXEL,
    IMAGE_COLOURS,
    NODATA_BLOCK,
    UTM,
    UTM_ORIGIN,
    UTM_PIXEL,
    block_centres,
    block_classes,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

TMS = morecantile.tms.get("WebMercatorQuad")


def lonlat(scene: str, row: float, col: float) -> tuple[float, float]:
    """Longitude and latitude of a (fractional) pixel position of a synthetic scene."""
    if scene == "geo":
        return GEO_ORIGIN[0] + col * GEO_PIXEL, GEO_ORIGIN[1] - row * GEO_PIXEL
    (lon,), (lat,) = transform(
        UTM, "EPSG:4326", [UTM_ORIGIN[0] + col * UTM_PIXEL], [UTM_ORIGIN[1] - row * UTM_PIXEL]
    )
    return lon, lat


def tile_pixel(lon: float, lat: float, z: int) -> tuple[morecantile.Tile, int, int]:
    """The Web Mercator tile holding a point, and the point's row and column in its 256 px."""
    tile = TMS.tile(lon, lat, z)
    bounds, (mx, my) = TMS.xy_bounds(tile), TMS.xy(lon, lat)
    col = int((mx - bounds.left) / (bounds.right - bounds.left) * 256)
    row = int((bounds.top - my) / (bounds.top - bounds.bottom) * 256)
    return tile, row, col


def expected_classes(scene: str, tile: morecantile.Tile) -> np.ndarray:
    """The classes (255: nodata or outside) of the scene pixels under each pixel of a 256 px tile and 1.5
    scene pixels from it in each direction: 5 x 256 x 256, the pixel itself first."""
    bounds = TMS.xy_bounds(tile)
    centres = (np.arange(256) + 0.5) / 256
    mx = bounds.left + centres[None, :] * (bounds.right - bounds.left)
    my = bounds.top - centres[:, None] * (bounds.top - bounds.bottom)
    mx, my = np.broadcast_to(mx, (256, 256)).ravel(), np.broadcast_to(my, (256, 256)).ravel()
    if scene == "geo":
        x, y = transform("EPSG:3857", "EPSG:4326", mx, my)
        col, row = (np.array(x) - GEO_ORIGIN[0]) / GEO_PIXEL, (GEO_ORIGIN[1] - np.array(y)) / GEO_PIXEL
    else:
        x, y = transform("EPSG:3857", UTM, mx, my)
        col, row = (np.array(x) - UTM_ORIGIN[0]) / UTM_PIXEL, (UTM_ORIGIN[1] - np.array(y)) / UTM_PIXEL
    classes = block_classes()
    r0, r1, c0, c1 = NODATA_BLOCK
    classes[r0:r1, c0:c1] = 255
    found = []
    for dr, dc in [(0, 0), (-1.5, 0), (1.5, 0), (0, -1.5), (0, 1.5)]:
        rn, cn = np.floor(row + dr).astype(int), np.floor(col + dc).astype(int)
        inside = (rn >= 0) & (rn < 256) & (cn >= 0) & (cn < 256)
        found.append(np.where(inside, classes[np.clip(rn, 0, 255), np.clip(cn, 0, 255)], 255))
    return np.stack(found).reshape(5, 256, 256)


@pytest.fixture(scope="module")
def client(viewer_data) -> TestClient:
    return TestClient(create_app(viewer_data.index()))


def rgba_at(client: TestClient, scene: str, layer: str, row: float, col: float, z: int) -> np.ndarray:
    """The RGBA of the 3 x 3 tile pixels around a scene pixel position (all must agree)."""
    tile, r, c = tile_pixel(*lonlat(scene, row, col), z)
    response = client.get(f"/tiles/{scene}/{layer}/{tile.z}/{tile.x}/{tile.y}.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
    patch = pixels[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].reshape(-1, 4)
    assert (patch == patch[0]).all(), f"{scene} {layer} z{z}: pixels differ around ({row}, {col}): {patch}"
    return patch[0]


def test_the_scene_list_has_sizes_bounds_scores_and_areas(client, viewer_data):
    doc = client.get("/api/scenes").json()
    assert [c["name"] for c in doc["classes"]] == list(CLASSES.names)
    assert [c["colour"] for c in doc["classes"]] == PALETTE[:8].tolist()
    scenes = {s["name"]: s for s in doc["scenes"]}
    assert sorted(scenes) == ["blocks", "geo", "scene_0"], "the confidence COG is a layer, not a scene"
    assert doc["problems"] == []
    for name, scene in scenes.items():
        with rasterio.open(viewer_data.maps / f"{name}.tif") as src:
            expected = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            assert (scene["width"], scene["height"]) == (src.width, src.height)
        assert scene["bounds"] == pytest.approx(expected, abs=1e-9)
    blocks = scenes["blocks"]
    assert (
        blocks["crs"] == "EPSG:32650"
        and blocks["pixel_size"] == [2.0, 2.0]
        and blocks["pixel_unit"] == "m"
        and blocks["layers"] == ["map", "image"]
    )
    written = viewer_data.index().get("blocks")
    assert blocks["scores"]["mIoU"] == pytest.approx(written.scores["mIoU"]) and blocks["scores"]["mIoU"] < 1
    assert blocks["areas_source"] == "from the area table map_scenes wrote"
    assert blocks["class_colours"] == PALETTE[:8].tolist() == scenes["geo"]["class_colours"]
    water = blocks["areas"]["classes"][0]
    assert (water["name"], water["pixels"], water["hectares"]) == (
        "water",
        64 * 128,
        pytest.approx(64 * 128 * 4 / 1e4),
    )
    assert blocks["areas"]["nodata_pixels"] == 64 * 64
    geo = scenes["geo"]
    assert geo["pixel_unit"] == "°"
    assert (
        geo["encoding"] == "naic"
        and geo["layers"] == ["map", "image", "confidence"]
        and geo["scores"] is None
    )
    assert geo["areas_source"] == "read back from the map" and geo["areas"]["mapped_hectares"] is None
    assert geo["areas"]["classes"][3]["pixels"] == 64 * 128
    assert client.get("/api/scenes/geo").json() == geo


@pytest.mark.parametrize(("scene", "zooms"), [("blocks", (16, 14)), ("geo", (17, 15))])
def test_map_tiles_have_each_class_colour_on_its_block(client, scene, zooms):
    palette = {(*c, 255) for c in PALETTE[:8].tolist()}
    for z in zooms:
        for index, (row, col) in block_centres().items():
            rgba = rgba_at(client, scene, "map", row, col, z)
            assert rgba.tolist() == [*PALETTE[index].tolist(), 255], f"class {index} at zoom {z}"
        # Nearest resampling: each tile pixel has the class of a scene pixel at most 1.5 px from it (the
        # warp's rounding), never a blend of two classes (bilinear puts 2 between water 0 and grassland 4).
        tile = TMS.tile(*lonlat(scene, 128, 128), z)
        pixels = tile_image(client, scene, "map", tile)
        around = expected_classes(scene, tile)
        shown = np.full((256, 256), 255)
        for index, colour in enumerate(PALETTE[:8]):
            shown[(pixels[..., :3] == colour).all(-1) & (pixels[..., 3] == 255)] = index
        sure = (around == around[0]).all(0)
        assert sure.sum() > 1000 and (shown[sure] == around[0][sure]).all()
        assert ((shown[None] == around).any(0)).all(), "a pixel that no scene pixel near it has"
        assert {tuple(p) for p in pixels[pixels[..., 3] > 0].tolist()} <= palette


def tile_image(client: TestClient, scene: str, layer: str, tile: morecantile.Tile) -> np.ndarray:
    response = client.get(f"/tiles/{scene}/{layer}/{tile.z}/{tile.x}/{tile.y}.png")
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


def test_nodata_and_the_world_outside_the_scene_are_transparent(client):
    r0, r1, c0, c1 = NODATA_BLOCK
    for scene in ("blocks", "geo"):
        for layer in ("map", "image"):
            assert rgba_at(client, scene, layer, (r0 + r1) / 2, (c0 + c1) / 2, 16)[3] == 0, (scene, layer)
        # A zoomed-out tile is mostly outside the 256 px scene: transparent 20 px beyond each side.
        tile = TMS.tile(*lonlat(scene, 128, 128), 14)
        pixels = tile_image(client, scene, "map", tile)
        beyond = [(-20, 128), (276, 128), (128, -20), (128, 276)]
        checked = 0
        for row, col in beyond:
            other, r, c = tile_pixel(*lonlat(scene, row, col), 14)
            if other == tile:
                assert pixels[r, c, 3] == 0, (scene, row, col)
                checked += 1
        assert checked >= 2 and pixels[..., 3].any()
    assert rgba_at(client, "geo", "confidence", (r0 + r1) / 2, (c0 + c1) / 2, 16)[3] == 0


def test_imagery_and_confidence_tiles(client):
    for index, (row, col) in block_centres().items():
        assert rgba_at(client, "blocks", "image", row, col, 16).tolist() == [
            *IMAGE_COLOURS[index].tolist(),
            255,
        ]
    from naic_seg.viewer.tiles import CONFIDENCE_COLOURS

    assert rgba_at(client, "geo", "confidence", 64, 32, 16).tolist() == [
        *CONFIDENCE_COLOURS[200, :3].tolist(),
        255,
    ]
    assert rgba_at(client, "geo", "confidence", 64, 224, 16).tolist() == [
        *CONFIDENCE_COLOURS[100, :3].tolist(),
        255,
    ]
    assert client.get("/tiles/blocks/confidence/16/0/0.png").status_code == 404  # blocks has none


def test_a_click_gives_the_class_the_pixel_and_the_coordinates(client):
    row, col = block_centres()[5]
    lon, lat = lonlat("blocks", row + 0.5, col + 0.5)
    answer = client.get("/api/scenes/blocks/point", params={"lon": lon, "lat": lat}).json()
    assert answer["inside"] and answer["class"]["name"] == "forest" and answer["class"]["value"] == 600
    assert (answer["row"], answer["column"]) == (int(row), int(col))
    assert answer["x"] == pytest.approx(UTM_ORIGIN[0] + (col + 0.5) * UTM_PIXEL, abs=1e-3)
    assert answer["y"] == pytest.approx(UTM_ORIGIN[1] - (row + 0.5) * UTM_PIXEL, abs=1e-3)
    assert answer["crs"] == "EPSG:32650" and answer["confidence"] is None
    geo = client.get(
        "/api/scenes/geo/point", params=dict(zip(("lon", "lat"), lonlat("geo", 64.5, 32.5), strict=True))
    )
    assert geo.json()["class"] | {"colour": None} == {
        "index": 0, "value": 100, "stored": 100, "name": "water", "colour": None
    }  # fmt: skip
    assert geo.json()["confidence"] == pytest.approx(200 / 255)
    r0, r1, c0, c1 = NODATA_BLOCK
    nodata = client.get(
        "/api/scenes/blocks/point",
        params=dict(zip(("lon", "lat"), lonlat("blocks", r0 + 9, c0 + 9), strict=True)),
    )
    assert nodata.json()["inside"] and nodata.json()["class"] is None
    outside = client.get("/api/scenes/blocks/point", params={"lon": 10.0, "lat": 10.0}).json()
    assert not outside["inside"] and outside["class"] is None
    assert client.get("/api/scenes/blocks/point", params={"lon": 200, "lat": 0}).status_code == 422


UNKNOWN = [
    "/tiles/nowhere/map/16/0/0.png",
    "/api/scenes/nowhere",
    "/api/scenes/nowhere/point?lon=0&lat=0",
    "/tiles/..%2Fsecret/map/16/0/0.png",
    "/tiles/..%2F..%2Fmaps%2Fblocks/map/16/0/0.png",
    "/tiles/%2E%2E/map/16/0/0.png",
    "/api/scenes/..%2Fsecret",
    "/tiles/%2Ftmp%2Fsecret/map/16/0/0.png",
    "/api/scenes/%2Fetc%2Fpasswd",
    "/tiles/..%5Csecret/map/16/0/0.png",
    "/tiles/blocks.tif/map/16/0/0.png",
    "/tiles/blocks/..%2F..%2Fsecret/16/0/0.png",
    "/static/..%2Fscenes.py",
]


@pytest.mark.parametrize("url", UNKNOWN)
def test_unknown_scenes_and_paths_are_refused(client, viewer_data, url):
    secret = viewer_data.maps.parent / "secret.tif"  # a readable map just outside the maps folder
    if not secret.exists():
        secret.write_bytes((viewer_data.maps / "blocks.tif").read_bytes())
    response = client.get(url.replace("%2Ftmp%2Fsecret", str(secret.with_suffix("")).replace("/", "%2F")))
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"


def test_raw_dot_dot_and_absolute_paths_are_refused_by_the_running_server(viewer_data):
    """HTTP clients fold ``..`` away; a raw request line keeps it."""
    secret = viewer_data.maps.parent / "secret.tif"
    secret.write_bytes((viewer_data.maps / "blocks.tif").read_bytes())
    with running(create_app(viewer_data.index())) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        paths = [
            "/tiles/../secret/map/16/0/0.png",
            f"/tiles/{secret.with_suffix('')}/map/16/0/0.png",
            "/api/scenes/../../secret",
            "/static/../scenes.py",
            "/tiles/blocks/../../../secret.tif",
        ]
        for path in paths:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 404, (path, response.status)
            assert not response.read().startswith(b"II*"), path  # no TIFF bytes
            conn.close()


def test_the_server_is_read_only_and_offline(client):
    assert client.post("/api/scenes").status_code == 405
    assert client.delete("/tiles/blocks/map/16/0/0.png").status_code == 405
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404
    page = client.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    static = Path(naic_seg.viewer.__file__).parent / "static"
    for own in ("index.html", "viewer.js", "viewer.css"):
        text = (static / own).read_text()
        assert not re.findall(r"(?:https?:)?//[\w-]+(?:\.[\w-]+)+", text), f"{own} names another server"
        assert client.get("/" if own == "index.html" else f"/static/{own}").text == text


def test_a_bad_file_in_the_maps_folder_is_named_not_shown(viewer_data, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "blocks.tif").write_bytes((viewer_data.maps / "blocks.tif").read_bytes())
    (maps / "broken.tif").write_text("not a tiff")
    (maps / ".blocks.tif.x1.tmp").write_text("a map being written")
    index = SceneIndex.build(maps, CLASSES)
    assert [s.name for s in index] == ["blocks"]
    assert len(index.problems) == 1 and "broken.tif" in index.problems[0]
    assert index.get("blocks").image is None and index.get("blocks").areas_source == "read back from the map"
    with pytest.raises(FileNotFoundError, match="map_scenes"):
        SceneIndex.build(tmp_path / "absent", CLASSES)


def test_the_viewer_library_does_not_import_kedro_and_ships_its_static_files():
    package = Path(naic_seg.viewer.__file__).parent
    imported = set()
    for node in (n for f in package.glob("*.py") for n in ast.walk(ast.parse(f.read_text()))):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "kedro" not in imported and "rio_tiler" in imported
    patterns = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    static = sorted(p.relative_to(package).as_posix() for p in (package / "static").rglob("*") if p.is_file())
    assert {"static/vendor/leaflet/leaflet.js", "static/vendor/leaflet/images/layers.png"} <= set(static)
    shipped = {
        p.relative_to(package).as_posix()
        for pattern in patterns["naic_seg.viewer"]
        for p in package.glob(pattern)
    }
    assert set(static) <= shipped, set(static) - shipped


def test_imagery_that_is_not_uint8_is_stretched_between_its_percentiles(viewer_data, tmp_path):
    """uint16 imagery (IMAGE_COLOURS x 40 + 1000): each band's darkest block goes to 0, its brightest to 255,
    the order kept; one band is shown in grey."""
    scenes, maps = tmp_path / "scenes", tmp_path / "maps"
    scenes.mkdir()
    maps.mkdir()
    with rasterio.open(viewer_data.scenes / "blocks.tif") as src:
        image, profile = src.read(), src.profile
    wide = np.where(image > 0, image.astype(np.uint16) * 40 + 1000, 0).astype(np.uint16)
    profile.update(dtype="uint16")
    for name, data in (("wide", wide), ("grey", wide[:1])):
        with rasterio.open(scenes / f"{name}.tif", "w", **(profile | {"count": len(data)})) as dst:
            dst.write(data)
        (maps / f"{name}.tif").write_bytes((viewer_data.maps / "blocks.tif").read_bytes())
    client = TestClient(create_app(SceneIndex.build(maps, CLASSES, scenes=scenes)))
    shown = np.array([rgba_at(client, "wide", "image", *rc, 16) for rc in block_centres().values()])
    for band in range(3):
        raw = IMAGE_COLOURS[:, band].astype(int)
        assert shown[raw.argmin(), band] == 0 and shown[raw.argmax(), band] == 255
        assert (np.diff(shown[np.argsort(raw, kind="stable"), band].astype(int)) >= 0).all()
    grey = np.array([rgba_at(client, "grey", "image", *rc, 16) for rc in block_centres().values()])
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    assert (grey[:, 0] == shown[:, 0]).all() and (grey[:, 3] == 255).all()
