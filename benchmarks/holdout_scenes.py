"""Scenes for choosing scene-mapping settings without the test set: the rs8 hold-out tiles of a run (its
``data/05_model_input/val_manifest.json``) put back where they came from, as ``../shared/data/scenes``
builds its ``rs8test_*`` scenes from test tiles: DeepGlobe and Dubai tiles at their offsets in their source
image (``sources.csv``: ``<source>@x,y``), nodata 0 elsewhere (real pixels lifted to >= 1); GID tiles, which
carry no offsets, in a square mosaic. Labels beside them as ``<scene>_label.tif`` (NAIC codes, 0 ignored).
The model of that run never trained on these tiles. The layout (tile size, margins, names, nodata, the
made-up georeference) is data: ``benchmarks/experiments/holdout_scenes.yml``.

    .venv/bin/python -m benchmarks.holdout_scenes data/05_model_input/val_manifest.json /tmp/holdout_scenes
    .venv/bin/python -m benchmarks.bench_scenes --skip-throughput --skip-memory \\
        --checkpoint CKPT --scenes /tmp/holdout_scenes --nodata-fill mirror
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

from benchmarks._experiments import load_holdout_scenes


def _tile(root: Path, tid: str, lift_to: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(root / "images" / f"{tid}.tif").convert("RGB")).transpose(2, 0, 1)
    label = np.asarray(Image.open(root / "labels" / f"{tid}.png")).astype(np.uint16)
    return np.maximum(image, lift_to), label


def _write(folder: Path, name: str, image: np.ndarray, label: np.ndarray, index: int, layout: dict) -> None:
    h, w = label.shape
    geo, tile = layout["georeference"], layout["tile"]
    west, north = geo["origin"]
    profile = {
        "driver": "GTiff", "width": w, "height": h, "crs": CRS.from_epsg(geo["epsg"]),
        "transform": from_origin(west + geo["origin_step_x"] * index, north, geo["pixel_m"], geo["pixel_m"]),
        "tiled": True, "blockxsize": tile, "blockysize": tile, "compress": layout["geotiff"]["compress"],
    }  # fmt: skip
    nodata = layout["nodata"]
    with rasterio.open(folder / f"{name}.tif", "w", count=3, dtype="uint8", nodata=nodata, **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / f"{name}_label.tif", "w", count=1, dtype="uint16", **profile) as dst:
        dst.write(label[None])


def build(manifest: Path, out: Path, layout: dict | None = None) -> dict:
    """Write the hold-out scenes of ``manifest`` (a run's val_manifest.json) into ``out``; a summary."""
    layout = layout or load_holdout_scenes()
    tile, lift, margin = layout["tile"], layout["lift_to"], layout["margin_tiles"]
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
        w, h = max(x for _, x, _ in tiles) + margin * tile, max(y for _, _, y in tiles) + margin * tile
        image = np.full((3, h, w), layout["nodata"], np.uint8)
        label = np.zeros((h, w), np.uint16)
        for tid, x, y in tiles:
            image[:, y : y + tile, x : x + tile], label[y : y + tile, x : x + tile] = _tile(root, tid, lift)
        safe = name.replace(":", "_").replace("/", "_").rsplit(".", 1)[0]
        _write(out, layout["names"]["placed"].format(source=safe), image, label, index, layout)
    side = math.ceil(math.sqrt(len(mosaic))) if mosaic else 0
    if mosaic:
        image = np.full((3, side * tile, side * tile), layout["nodata"], np.uint8)
        label = np.zeros((side * tile, side * tile), np.uint16)
        for k, tid in enumerate(mosaic):
            y, x = (i * tile for i in divmod(k, side))
            image[:, y : y + tile, x : x + tile], label[y : y + tile, x : x + tile] = _tile(root, tid, lift)
        _write(out, layout["names"]["mosaic"], image, label, len(placed), layout)
    return {
        "placed_scenes": len(placed),
        "placed_tiles": sum(map(len, placed.values())),
        "mosaic": len(mosaic),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path, help="a run's data/05_model_input/val_manifest.json")
    ap.add_argument("out", type=Path, help="the folder to write the scenes and their labels into")
    args = ap.parse_args(argv)
    return build(args.manifest, args.out)


if __name__ == "__main__":
    print(json.dumps(main()))
