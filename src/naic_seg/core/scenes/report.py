"""Reading maps back: class areas (pixels, hectares, shares), scores against label rasters and quick-look
PNGs, each read by blocks of rows so that a map is never held whole."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

from naic_seg.core.atomic import atomic_path
from naic_seg.core.labels import IGNORE_INDEX, PALETTE, ClassTable
from naic_seg.core.metrics import confusion_matrix, scores
from naic_seg.core.scenes.io import COG_BLOCK, stretch_limits, to_uint8
from naic_seg.core.scenes.options import SceneError, SceneOptions


def row_blocks(height: int, rows: int = COG_BLOCK) -> Iterator[tuple[int, int]]:
    """(first row, rows) of each block of ``rows`` full-width rows, the last one short."""
    for y in range(0, height, rows):
        yield y, min(rows, height - y)


def map_to_index(values: np.ndarray, classes: ClassTable, output_values: str) -> np.ndarray:
    """Stored map values -> class indices (nodata -> 255)."""
    if output_values == "naic":
        return classes.to_index(values)
    return values.astype(np.uint8, copy=False)


def pixel_area(crs, transform) -> tuple[float | None, str]:
    """Square metres per pixel from the transform, or None with the reason."""
    if crs is None:
        return None, "the scene has no CRS: hectares cannot be computed"
    if crs.is_geographic:
        return None, (
            f"the scene's CRS ({crs.to_string()}) is geographic (degrees): a pixel's area varies with "
            "latitude, so hectares are not given; reproject the scene to a projected CRS for areas"
        )
    unit, factor = crs.linear_units_factor
    area = abs(transform.a * transform.e - transform.b * transform.d) * factor**2
    return area, f"{area:g} m² per pixel ({crs.to_string()}, units: {unit})"


def area_table(map_path: str | os.PathLike, classes: ClassTable, output_values: str = "index") -> dict:
    """Pixels, hectares and share of the mapped (non-nodata) area per class, read back by blocks."""
    counts = np.zeros(classes.num_classes, dtype=np.int64)
    with rasterio.open(map_path) as src:
        for y, rows in row_blocks(src.height):
            idx = map_to_index(src.read(1, window=Window(0, y, src.width, rows)), classes, output_values)
            counts += np.bincount(idx.ravel(), minlength=256)[: classes.num_classes]
        area, note = pixel_area(src.crs, src.transform)
        total = src.width * src.height
    mapped = int(counts.sum())
    rows = [
        {
            "index": i,
            "value": int(v),
            "name": name,
            "pixels": int(c),
            "hectares": None if area is None else float(c) * area / 1e4,
            "share": float(c) / mapped if mapped else 0.0,
        }
        for i, (v, name, c) in enumerate(zip(classes.values, classes.names, counts, strict=True))
    ]
    return {
        "mapped_pixels": mapped,
        "nodata_pixels": int(total - mapped),
        "pixel_area_m2": area,
        "mapped_hectares": None if area is None else mapped * area / 1e4,
        "note": note,
        "classes": rows,
    }


def score_map(
    map_path: str | os.PathLike,
    label_path: str | os.PathLike,
    classes: ClassTable,
    output_values: str = "index",
) -> dict:
    """Scores of a map against a label raster of stored values (0 and unknown values ignored), by blocks.
    Labelled pixels the map left as nodata are counted apart, not scored."""
    n = classes.num_classes
    confusion = torch.zeros(n, n, dtype=torch.int64)
    unmapped = 0
    with rasterio.open(map_path) as pred_src, rasterio.open(label_path) as lab_src:
        if (pred_src.width, pred_src.height) != (lab_src.width, lab_src.height):
            raise SceneError(f"label '{label_path}' and map '{map_path}' differ in size")
        for y, rows in row_blocks(pred_src.height):
            win = Window(0, y, pred_src.width, rows)
            pred = map_to_index(pred_src.read(1, window=win), classes, output_values)
            truth = classes.to_index(lab_src.read(1, window=win))
            gap = (pred == IGNORE_INDEX) & (truth != IGNORE_INDEX)
            unmapped += int(gap.sum())
            truth[gap] = IGNORE_INDEX
            confusion += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), n)
    result = scores(confusion, classes.names)
    result["confusion"] = confusion.tolist()
    result["labelled_pixels_left_nodata"] = unmapped
    return result


def quicklook(
    scene: str | os.PathLike,
    map_path: str | os.PathLike,
    target: str | os.PathLike,
    classes: ClassTable,
    options: SceneOptions,
    max_side: int = 1024,
) -> None:
    """A PNG: the scene (decimated read) beside its map, with a legend of the classes, written atomically."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    with rasterio.open(scene) as src:
        scale = max(1, math.ceil(max(src.width, src.height) / max_side))
        shape = (max(1, src.height // scale), max(1, src.width // scale))
        image = src.read(list(options.bands), out_shape=(3, *shape), resampling=Resampling.average)
        image = to_uint8(image, stretch_limits(src, options))
        title = f"{Path(scene).name} ({src.width} x {src.height})"
    with rasterio.open(map_path) as msrc:
        idx = map_to_index(
            msrc.read(1, out_shape=shape, resampling=Resampling.nearest), classes, options.output_values
        )
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: classes.num_classes] = [PALETTE[i % len(PALETTE)] for i in range(classes.num_classes)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.6), constrained_layout=True)
    axes[0].imshow(np.moveaxis(image, 0, -1))
    axes[0].set_title(title)
    axes[1].imshow(lut[idx])
    axes[1].set_title("land-cover map (black: nodata)")
    for ax in axes:
        ax.set_axis_off()
    handles = [Patch(color=PALETTE[i % len(PALETTE)] / 255, label=n) for i, n in enumerate(classes.names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(8, len(handles)), frameon=False)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)
