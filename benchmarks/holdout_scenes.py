"""Scenes for choosing scene-mapping settings without the test set: the rs8 hold-out tiles of a run (its
``data/05_model_input/val_manifest.json``) put back where they came from, as ``../shared/data/scenes``
builds its ``rs8test_*`` scenes from test tiles: DeepGlobe and Dubai tiles at their offsets in their source
image (``sources.csv``: ``<source>@x,y``), nodata 0 elsewhere (real pixels lifted to >= 1); GID tiles, which
carry no offsets, in a square mosaic. Labels beside them as ``<scene>_label.tif`` (NAIC codes, 0 ignored).
The model of that run never trained on these tiles.

    .venv/bin/python -m benchmarks.holdout_scenes data/05_model_input/val_manifest.json /tmp/holdout_scenes
    .venv/bin/python -m benchmarks.bench_scenes --skip-throughput --skip-memory \\
        --checkpoint CKPT --scenes /tmp/holdout_scenes --nodata-fill mirror
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

TILE = 256


def _tile(root: Path, tid: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(root / "images" / f"{tid}.tif").convert("RGB")).transpose(2, 0, 1)
    label = np.asarray(Image.open(root / "labels" / f"{tid}.png")).astype(np.uint16)
    return np.maximum(image, 1), label


def _write(folder: Path, name: str, image: np.ndarray, label: np.ndarray, index: int) -> None:
    h, w = label.shape
    profile = {
        "driver": "GTiff", "width": w, "height": h, "crs": CRS.from_epsg(32650),
        "transform": from_origin(400_000.0 + 10_000 * index, 4_000_000.0, 0.5, 0.5),
        "tiled": True, "blockxsize": TILE, "blockysize": TILE, "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(folder / f"{name}.tif", "w", count=3, dtype="uint8", nodata=0, **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / f"{name}_label.tif", "w", count=1, dtype="uint16", **profile) as dst:
        dst.write(label[None])


def build(manifest: Path, out: Path) -> dict:
    entries = json.loads(manifest.read_text())
    root = Path(entries[0]["filename"]).parents[1]
    with open(root / "sources.csv", newline="") as fh:
        sources = {row["id"]: row["source"] for row in csv.DictReader(fh)}
    placed: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    mosaic = []
    for entry in entries:
        tid = Path(entry["filename"]).stem
        source = sources[tid]
        if "@" in source:
            name, offset = source.rsplit("@", 1)
            x, y = map(int, offset.split(","))
            placed[name].append((tid, x, y))
        else:
            mosaic.append(tid)
    out.mkdir(parents=True, exist_ok=True)
    for index, (name, tiles) in enumerate(sorted(placed.items())):
        w, h = max(x for _, x, _ in tiles) + 2 * TILE, max(y for _, _, y in tiles) + 2 * TILE
        image, label = np.zeros((3, h, w), np.uint8), np.zeros((h, w), np.uint16)
        for tid, x, y in tiles:
            image[:, y : y + TILE, x : x + TILE], label[y : y + TILE, x : x + TILE] = _tile(root, tid)
        safe = name.replace(":", "_").replace("/", "_").rsplit(".", 1)[0]
        _write(out, f"val_{safe}", image, label, index)
    side = math.ceil(math.sqrt(len(mosaic))) if mosaic else 0
    if mosaic:
        image = np.zeros((3, side * TILE, side * TILE), np.uint8)
        label = np.zeros((side * TILE, side * TILE), np.uint16)
        for k, tid in enumerate(mosaic):
            y, x = (i * TILE for i in divmod(k, side))
            image[:, y : y + TILE, x : x + TILE], label[y : y + TILE, x : x + TILE] = _tile(root, tid)
        _write(out, "val_gid_mosaic", image, label, len(placed))
    return {
        "placed_scenes": len(placed),
        "placed_tiles": sum(map(len, placed.values())),
        "mosaic": len(mosaic),
    }


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1]), Path(sys.argv[2]))))
