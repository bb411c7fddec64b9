"""Synthetic scenes and their maps for the viewer's tests, written with the project's own map writer.

``blocks``: a 256 x 256 RGB scene in EPSG:32650 at 2 m whose eight 64 x 128 px blocks each have a colour of
their own, with a nodata corner; it is mapped by :func:`naic_seg.core.scenes.map_scene` with a "model" that
gives each pixel the class of its colour, so the COG has the class blocks exactly, the project's colour table
and nodata 255 in the corner. Its label is wrong in half of one block, so its scores are not perfect.
``geo``: the same blocks in EPSG:4326 mapped as stored values (uint16, nodata 0), with a confidence COG and
no area table entry. ``scene_0``: a Voronoi demo scene (``core.synthetic``) mapped by the same colour rule
from a blurred image: an imperfect map that looks like one, for the screenshot.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin

from naic_seg.core.atomic import write_json
from naic_seg.core.labels import ClassTable
from naic_seg.core.scenes import SceneOptions, map_scene
from naic_seg.core.synthetic import CLASS_COLOURS, write_synthetic_scenes
from naic_seg.datasets.scenes import SceneListing
from naic_seg.pipelines.map_scenes.nodes import measure_areas, score_maps
from tests.conftest import PROJECT_ROOT

CLASSES = ClassTable.naic()
MAP_SCENES = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_map_scenes.yml").read_text())["map_scenes"]
SIDE, BLOCK_W, BLOCK_H = 256, 64, 128
NODATA_BLOCK = (192, 256, 192, 256)  # rows, then columns: in class 7's block
UTM = CRS.from_epsg(32650)
UTM_ORIGIN, UTM_PIXEL = (400_000.0, 3_500_000.0), 2.0
GEO_ORIGIN, GEO_PIXEL = (116.2, 31.7), 2e-5
# Image colours of the classes: not the map's, so a screen pixel tells the map from the imagery.
IMAGE_COLOURS = np.array(
    [[40, 70, 140], [150, 150, 150], [200, 90, 70], [180, 170, 60], [110, 170, 80], [30, 100, 40],
     [160, 120, 80], [220, 200, 200]],
    dtype=np.uint8,
)  # fmt: skip


def block_classes() -> np.ndarray:
    classes = np.zeros((SIDE, SIDE), dtype=np.uint8)
    for i in range(8):
        r, c = divmod(i, 4)
        classes[r * BLOCK_H : (r + 1) * BLOCK_H, c * BLOCK_W : (c + 1) * BLOCK_W] = i
    return classes


def block_centres() -> dict[int, tuple[float, float]]:
    """Class index -> (row, column) of the centre of its block's valid part."""
    centres = {i: ((i // 4 + 0.5) * BLOCK_H, (i % 4 + 0.5) * BLOCK_W) for i in range(8)}
    centres[7] = (160.0, 224.0)  # the block's rows above the nodata corner
    return centres


def colour_logits(colours: np.ndarray, blur: int = 0):
    """A "model": each pixel's logits are minus its squared distance to each class colour."""
    reference = torch.from_numpy(colours.astype(np.float32))

    def logits(images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if blur:
            x = F.avg_pool2d(x, blur, stride=1, padding=blur // 2, count_include_pad=False)
        return -((x[:, None] - reference[None, :, :, None, None]) ** 2).sum(2)

    return logits


def write_raster(path: Path, data: np.ndarray, crs, transform, nodata) -> Path:
    count, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype}
    with rasterio.open(
        path, "w", crs=crs, transform=transform, nodata=nodata, compress="deflate", **profile
    ) as d:
        d.write(data)
    return path


def block_image() -> np.ndarray:
    image = np.moveaxis(IMAGE_COLOURS[block_classes()], -1, 0).copy()
    r0, r1, c0, c1 = NODATA_BLOCK
    image[:, r0:r1, c0:c1] = 0
    return image


@dataclass(frozen=True)
class ViewerData:
    root: Path
    maps: Path
    scenes: Path
    areas: Path
    scores: Path

    def index(self, **kwargs):
        from naic_seg.viewer import SceneIndex, read_json

        areas, scores = read_json(self.areas), read_json(self.scores)
        return SceneIndex.build(self.maps, CLASSES, scenes=self.scenes, areas=areas, scores=scores, **kwargs)


def _write_scenes(root: Path) -> tuple[Path, Path]:
    scenes, maps = root / "scenes", root / "maps"
    scenes.mkdir(parents=True)
    utm = from_origin(*UTM_ORIGIN, UTM_PIXEL, UTM_PIXEL)
    write_raster(scenes / "blocks.tif", block_image(), UTM, utm, 0)
    label = CLASSES.to_value(block_classes())
    label[: BLOCK_H // 2, :BLOCK_W] = CLASSES.values[1]  # half of the water block is labelled transport
    write_raster(scenes / "blocks_label.tif", label[None], UTM, utm, None)
    write_raster(
        scenes / "geo.tif",
        block_image(),
        CRS.from_epsg(4326),
        from_origin(*GEO_ORIGIN, GEO_PIXEL, GEO_PIXEL),
        0,
    )
    demo = write_synthetic_scenes(root / "demo", sizes=((300, 400),), seed=3)
    for name in ("scene_0.tif", "scene_0_label.tif"):
        shutil.copy(demo / name, scenes / name)
    colours = colour_logits(IMAGE_COLOURS)
    for name, values in (("blocks", "index"), ("geo", "naic")):
        map_scene(
            scenes / f"{name}.tif",
            maps / f"{name}.tif",
            colours,
            CLASSES,
            SceneOptions(window=64, output_values=values),
        )
    demo_colours = colour_logits(CLASS_COLOURS.astype(np.uint8), blur=9)
    map_scene(scenes / "scene_0.tif", maps / "scene_0.tif", demo_colours, CLASSES, SceneOptions(window=128))
    return scenes, maps


def _write_confidence(maps: Path) -> None:
    """``geo_confidence.tif``: 200 on the left half, 100 on the right, nodata 0 where the map is nodata."""
    with rasterio.open(maps / "geo.tif") as src:
        valid = src.read(1) != src.nodata
        profile = {"crs": src.crs, "transform": src.transform}
    confidence = np.where(np.arange(SIDE)[None, :] < SIDE // 2, 200, 100).astype(np.uint8)
    write_raster(maps / "geo_confidence.tif", np.where(valid, confidence, 0)[None], nodata=0, **profile)


@pytest.fixture(scope="session")
def viewer_data(tmp_path_factory) -> ViewerData:
    root = tmp_path_factory.mktemp("viewer")
    scenes, maps = _write_scenes(root)
    _write_confidence(maps)
    labels = {name: scenes / f"{name}_label.tif" for name in ("blocks", "scene_0")}
    listing = SceneListing(str(scenes), tuple(scenes / f"{name}.tif" for name in labels), labels)
    own = {name: maps / f"{name}.tif" for name in labels}  # "geo" has no entry: the viewer reads its areas
    options = {**MAP_SCENES, "output_values": "index"}  # conf/base's block, as the pipeline passes it
    areas = measure_areas(listing, own, CLASSES.as_config(), options)
    report, _ = score_maps(listing, own, CLASSES.as_config(), options)
    write_json(root / "scene_areas.json", areas)
    write_json(root / "scene_scores.json", report)
    return ViewerData(root, maps, scenes, root / "scene_areas.json", root / "scene_scores.json")


def pytest_terminal_summary(terminalreporter) -> None:
    """A browser test that could not run says so in one line, loud in CI (where it should have run)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "test_browser" in r.nodeid]
    if not skipped:
        return
    reason = str(skipped[0].longrepr[-1]) if isinstance(skipped[0].longrepr, tuple) else "see the skips above"
    line = f"BROWSER TESTS SKIPPED ({len(skipped)}): {reason.removeprefix('Skipped: ')}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        terminalreporter.write_sep("!", line, red=True, bold=True)
    else:
        terminalreporter.write_line(line, yellow=True)
