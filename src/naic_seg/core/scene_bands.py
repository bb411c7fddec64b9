"""A big scene mapped in horizontal bands, each on its own (a task of a cluster), joined into one COG.

A band is a run of whole rows of windows (:class:`naic_seg.core.scenes.WindowAxis` of the whole scene). It
maps the rows of pixels those windows finish and also runs the row of windows above, unwritten: with overlap
at most 0.5 a pixel is weighed by two rows of windows at most, so that row's carry gives the band's first rows
the very blended sums, added in the same order, that a whole-scene pass gives them. The band writes its rows
into a sparse GeoTIFF of the scene's size (blocks it does not write take no space), atomically;
:func:`join_bands` copies every band's rows into one strips file and writes the COG with the writer
settings of :func:`naic_seg.core.scenes.map_scene`. The map is thus the whole-scene map, pixel for pixel,
whenever the model gives a window the same logits whatever batch it comes in.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from naic_seg.core.atomic import atomic_path
from naic_seg.core.labels import ClassTable
from naic_seg.core.scenes import (
    COG_BLOCK,
    GDAL_CACHE_MB,
    LogitsFn,
    SceneInfo,
    SceneOptions,
    SceneResult,
    WindowAxis,
    colormap,
    inspect_scene,
    map_into,
    map_profile,
    output_encoding,
    strips_file,
    write_cog,
)


@dataclass(frozen=True)
class Band:
    """Rows ``window_rows`` of windows of a scene, finishing its pixel rows ``first_row .. end_row``."""

    index: int
    count: int
    window_rows: range
    first_row: int
    end_row: int

    def describe(self) -> str:
        return f"band {self.index + 1}/{self.count} (rows {self.first_row}..{self.end_row})"


def plan_bands(info: SceneInfo, options: SceneOptions, split_above_mpx: float | None) -> list[Band] | None:
    """None for a scene of at most ``split_above_mpx`` megapixels (or with ``split_above_mpx`` None): it is
    mapped whole. Otherwise bands of whole rows of windows of about ``split_above_mpx`` megapixels each."""
    megapixels = info.width * info.height / 1e6
    if split_above_mpx is None or megapixels <= split_above_mpx:
        return None
    ys = WindowAxis.of(info.height, options.window, options.stride)
    rows = len(ys.starts)
    count = min(rows, math.ceil(megapixels / split_above_mpx))
    if count < 2:
        return None
    per_band = math.ceil(rows / count)
    bounds = list(range(0, rows, per_band)) + [rows]
    return [
        Band(i, len(bounds) - 1, range(a, b), ys.starts[a] + ys.leads[a], ys.starts[b - 1] + ys.ends[b - 1])
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]


def map_band(
    scene: str | os.PathLike,
    target: str | os.PathLike,
    logits_fn: LogitsFn,
    classes: ClassTable,
    options: SceneOptions,
    band: Band,
) -> SceneResult:
    """Map ``band`` of ``scene`` into ``target`` (atomically): a sparse GeoTIFF of the scene's size holding
    the band's rows only. The result counts the band's own windows and pixels."""
    if options.window is None:
        raise ValueError("SceneOptions.window is needed to map a scene")
    info = inspect_scene(scene, options)
    dtype, nodata, lut = output_encoding(classes, options.output_values)
    started = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), atomic_path(target) as tmp, rasterio.open(scene) as src:
        # Deflate at the fastest level: band files are read once, by the join.
        extra = {"sparse_ok": True, "compress": "deflate", "zlevel": 1, "bigtiff": "if_safer"}
        with rasterio.open(tmp, "w", **map_profile(src, dtype, nodata), **extra) as dst:
            result = map_into(src, dst, info, logits_fn, classes, options, lut, rows=band.window_rows)
    result.seconds = time.perf_counter() - started
    result.extra["band"] = band.describe()
    return result


def join_bands(
    scene: str | os.PathLike,
    parts: Sequence[tuple[Band, str | os.PathLike]],
    target: str | os.PathLike,
    classes: ClassTable,
    options: SceneOptions,
) -> None:
    """Copy each band's rows from its file into one strips GeoTIFF and write the COG ``target`` from it
    (atomically), as :func:`naic_seg.core.scenes.map_scene` writes a scene mapped whole. The bands must
    cover the scene's rows without gap or overlap."""
    target = Path(target)
    dtype, nodata, _ = output_encoding(classes, options.output_values)
    with rasterio.open(scene) as src:
        profile = map_profile(src, dtype, nodata)
    covered = sorted((band.first_row, band.end_row) for band, _ in parts)
    edges = [0] + [end for _, end in covered]
    if [start for start, _ in covered] != edges[:-1] or edges[-1] != profile["height"]:
        raise ValueError(f"bands {covered} do not cover the {profile['height']} rows of '{scene}' once")
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB),
        atomic_path(target) as final_tmp,
        strips_file(target) as strips,
    ):
        with rasterio.open(strips, "w", **profile) as dst:
            dst.write_colormap(1, colormap(classes, options.output_values))  # before any pixel
            for band, path in parts:
                _copy_rows(path, dst, band.first_row, band.end_row)
        write_cog(strips, final_tmp, "MODE")


def _copy_rows(path: str | os.PathLike, dst, first: int, end: int) -> None:
    with rasterio.open(path) as src:
        if (src.width, src.height) != (dst.width, dst.height):
            size = f"{src.width} x {src.height}, its scene {dst.width} x {dst.height}"
            raise ValueError(f"band file '{path}' is {size}")
        for y in range(first, end, COG_BLOCK):
            window = Window(0, y, dst.width, min(COG_BLOCK, end - y))
            dst.write(src.read(1, window=window)[None], window=window)


def merged_result(name: str, results: Sequence[SceneResult], seconds: float) -> SceneResult:
    """One scene's result from its bands' (windows, pixels and classes summed)."""
    first = results[0]
    return SceneResult(
        name,
        first.width,
        first.height,
        sum(r.windows for r in results),
        sum(r.windows_skipped for r in results),
        seconds,
        np.sum([r.class_pixels for r in results], axis=0).tolist(),
        sum(r.nodata_pixels for r in results),
        {"bands": len(results)},
    )
