"""A seeded generator of synthetic contest-format tiles, for trying the flow without any download.

The tiles are not remote-sensing imagery: each label is a Voronoi map of the eight classes (plus a few
unlabelled 0 pixels), and each image paints every class with its own colour and texture, so a model can
learn the task in a few CPU minutes. Use them to exercise the pipelines, never to judge a model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".synthetic-complete"
# One colour per class (RGB), chosen to be distinguishable but not trivially separable by one channel.
CLASS_COLOURS = np.array(
    [
        [40, 70, 140],
        [150, 150, 150],
        [200, 90, 70],
        [180, 170, 60],
        [110, 170, 80],
        [30, 100, 40],
        [160, 120, 80],
        [220, 200, 200],
    ],
    dtype=np.float32,
)


def synthetic_tile(rng: np.random.Generator, size: int, label_values) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, uint16 label) pair."""
    n_cls = len(label_values)
    n_seeds = int(rng.integers(5, 10))
    seeds = rng.uniform(0, size, size=(n_seeds, 2))
    classes = rng.integers(0, n_cls, size=n_seeds)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    cls_map = classes[dist.argmin(axis=0)]
    colours = CLASS_COLOURS[np.arange(n_cls) % len(CLASS_COLOURS)]
    image = colours[cls_map]
    # Class-dependent stripes make texture, not only colour, informative.
    stripes = np.sin((xx + yy * (cls_map % 3)) * (0.2 + 0.1 * cls_map)) * 12
    image = image + stripes[..., None] + rng.normal(0, 14, size=image.shape)
    label = np.asarray(label_values, dtype=np.uint16)[cls_map]
    y0, x0 = rng.integers(0, size - size // 8, size=2)
    label[y0 : y0 + size // 16, x0 : x0 + size // 16] = 0  # a small unlabelled patch
    return np.clip(image, 0, 255).astype(np.uint8), label


@contextlib.contextmanager
def _built_once(root: Path, what: str) -> Iterator[Path | None]:
    """A temporary folder beside ``root`` to fill, renamed into place when the block ends, so a killed run
    leaves no half tree; None when ``root`` is already a finished one (it holds the marker)."""
    if (root / COMPLETE_MARKER).exists():
        yield None
        return
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"'{root}' exists and is not a finished synthetic {what}; remove it first")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        yield tmp
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_synthetic_tiles(
    root: str | os.PathLike,
    n_train: int = 48,
    n_test: int = 16,
    size: int = 256,
    seed: int = 0,
    label_values=(100, 200, 300, 400, 500, 600, 700, 800),
) -> Path:
    """Write ``root/{train,test}/{images,labels}`` once; later calls find the marker and return.

    Like rs8, ``train/sources.csv`` names each train tile's source (``synthetic:<id>.tif``): every tile is
    drawn on its own, so each is its own source, and ``conf/rs8``'s grouped hold-out runs on these trees.

    The tree is built in a temporary folder and renamed into place, so a killed run leaves no half tree.
    """
    root = Path(root)
    with _built_once(root, "demo tree") as tmp:
        if tmp is None:
            return root
        log.info("Writing %d + %d synthetic demo tiles to %s (seed %d)", n_train, n_test, root, seed)
        rng = np.random.default_rng(seed)
        ids = rng.choice(np.arange(10_000, 200_000), size=n_train + n_test, replace=False)
        for i, tid in enumerate(ids):
            split = "train" if i < n_train else "test"
            image, label = synthetic_tile(rng, size, label_values)
            (tmp / split / "images").mkdir(parents=True, exist_ok=True)
            (tmp / split / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp / split / "images" / f"{tid}.tif", compression="tiff_lzw")
            Image.fromarray(label).save(tmp / split / "labels" / f"{tid}.png")
        if n_train:
            rows = "".join(f"{tid},synthetic:{tid}.tif\n" for tid in ids[:n_train])
            (tmp / "train" / "sources.csv").write_text("id,source\n" + rows)
        (tmp / COMPLETE_MARKER).write_text(f"seed={seed} train={n_train} test={n_test} size={size}\n")
    return root


def write_synthetic_scenes(
    root: str | os.PathLike,
    sizes=((700, 560), (433, 517)),
    seed: int = 0,
    label_values=(100, 200, 300, 400, 500, 600, 700, 800),
) -> Path:
    """Write seeded synthetic GeoTIFF scenes (``scene_<i>.tif``, 3-band uint8, nodata 0, EPSG:32650 at
    0.5 m) with ``scene_<i>_label.tif`` beside each, once: later calls find the marker and return.

    Each scene is a larger Voronoi map painted like the demo tiles, with a nodata block in a corner, so the
    demo's map_scenes has blending, nodata and a score to show. Not imagery: never judge a model on it.
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    root = Path(root)
    with _built_once(root, "scene folder") as tmp:
        if tmp is None:
            return root
        log.info("Writing %d synthetic demo scenes to %s (seed %d)", len(sizes), root, seed)
        rng = np.random.default_rng(seed)
        for i, (height, width) in enumerate(sizes):
            side = max(height, width)
            image, label = synthetic_tile(rng, side, label_values)
            image, label = image[:height, :width], label[:height, :width]
            image = np.maximum(image, 1)  # 0 is nodata
            image[: height // 5, : width // 4] = 0
            label[: height // 5, : width // 4] = 0
            profile = {
                "driver": "GTiff",
                "width": width,
                "height": height,
                "crs": CRS.from_epsg(32650),
                "transform": from_origin(400_000.0 + 1000 * i, 3_500_000.0, 0.5, 0.5),
                "compress": "deflate",
            }
            with rasterio.open(
                tmp / f"scene_{i}.tif", "w", count=3, dtype="uint8", nodata=0, **profile
            ) as dst:
                dst.write(np.moveaxis(image, -1, 0))
            with rasterio.open(tmp / f"scene_{i}_label.tif", "w", count=1, dtype="uint16", **profile) as dst:
                dst.write(label[None])
        (tmp / COMPLETE_MARKER).write_text(f"seed={seed} sizes={list(sizes)}\n")
    return root
