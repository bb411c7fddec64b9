"""Raster reading and writing for scene mapping: finding and checking scenes (headers, bands, labels), reading
full-width strips of rows (bands picked, stretched to 8 bits, nodata filled for the model), and writing maps
(colour table, stored values, nodata) as Cloud-Optimized GeoTIFFs through a temporary plain GeoTIFF."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from naic_seg.core.labels import IGNORE_INDEX, PALETTE, ClassTable
from naic_seg.core.scenes.geometry import WindowAxis
from naic_seg.core.scenes.options import LABEL_SUFFIX, SCENE_SUFFIXES, SceneError, SceneInfo, SceneOptions

# GDAL's block cache: the default (5 % of RAM) would keep every written block of a big map resident.
GDAL_CACHE_MB = 32
COG_BLOCK = 512
CONFIDENCE_NODATA = 0


# --- finding and checking scenes ----------------------------------------------------------------------------


def label_path_for(scene: Path) -> Path | None:
    """``<scene>_label.tif`` beside the scene, if there is one."""
    for suffix in SCENE_SUFFIXES:
        candidate = scene.with_name(f"{scene.stem}{LABEL_SUFFIX}{suffix}")
        if candidate.is_file():
            return candidate
    return None


def split_scene_files(files: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(scenes, other files): scenes are ``*.tif``/``*.tiff`` that are not ``*_label.tif`` labels."""
    scenes, others = [], []
    for f in map(Path, files):
        is_tif = f.suffix.lower() in SCENE_SUFFIXES
        (scenes if is_tif and not f.stem.endswith(LABEL_SUFFIX) else others).append(f)
    others = [f for f in others if not (f.suffix.lower() in SCENE_SUFFIXES and f.stem.endswith(LABEL_SUFFIX))]
    return sorted(scenes), sorted(others)


def inspect_scene(path: str | os.PathLike, options: SceneOptions) -> SceneInfo:
    """Open the header only and check that the scene can be mapped with ``options``."""
    path = Path(path)
    try:
        with rasterio.open(path) as src:
            driver, count, dtypes = src.driver, src.count, src.dtypes
            width, height = src.width, src.height
    except RasterioError as err:
        raise SceneError(f"'{path}' is not a readable GeoTIFF: {err}") from err
    if driver != "GTiff":
        raise SceneError(f"'{path}' is not a GeoTIFF (GDAL reads it as {driver})")
    bad = [b for b in options.bands if not 1 <= b <= count]
    if bad:
        raise SceneError(f"'{path}' has {count} band(s); bands {list(options.bands)} asks for band(s) {bad}")
    dtype = dtypes[options.bands[0] - 1]
    used = {dtypes[b - 1] for b in options.bands}
    if used != {"uint8"} and options.scaling is None:
        raise SceneError(
            f"'{path}' has {'/'.join(sorted(used))} pixels; only uint8 scenes are mapped as they are: set "
            "the scaling parameter (e.g. {method: percentile, low: 2, high: 98}) to stretch them to 8 bits"
        )
    label = label_path_for(path)
    if label is not None:
        _check_label(label, path, width, height)
    return SceneInfo(path, width, height, dtype, label)


def _check_label(label: Path, scene: Path, width: int, height: int) -> None:
    try:
        with rasterio.open(label) as lab:
            if (lab.width, lab.height) != (width, height):
                raise SceneError(
                    f"label '{label}' is {lab.width} x {lab.height}, its scene '{scene}' {width} x {height}"
                )
    except RasterioError as err:
        raise SceneError(f"label '{label}' is not readable: {err}") from err


def check_scenes(paths: Sequence[str | os.PathLike], options: SceneOptions) -> list[SceneInfo]:
    """Inspect every scene; one error lists every bad one, so nothing is mapped from a bad folder."""
    infos, problems = [], []
    for p in paths:
        try:
            infos.append(inspect_scene(p, options))
        except SceneError as err:
            problems.append(str(err))
    if problems:
        raise SceneError(f"{len(problems)} scene(s) cannot be mapped:\n  " + "\n  ".join(problems))
    return infos


# --- reading: bands, scaling, nodata ------------------------------------------------------------------------


def stretch_limits(src, options: SceneOptions) -> np.ndarray | None:
    """Per-band (low, high) percentiles of valid pixels from a decimated read (the scene is never read
    whole: GDAL decimates, or uses overviews when the file has them); None without ``options.scaling``."""
    if options.scaling is None:
        return None
    scale = max(1, math.ceil(max(src.width, src.height) / 1024))
    shape = (max(1, src.height // scale), max(1, src.width // scale))
    data = src.read(list(options.bands), out_shape=(3, *shape), resampling=Resampling.nearest)
    valid = src.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
    low, high = options.scaling.get("low", 2), options.scaling.get("high", 98)
    limits = np.zeros((3, 2), dtype=np.float64)
    for b in range(3):
        values = data[b][valid] if valid.any() else data[b].ravel()
        limits[b] = np.percentile(values, [low, high]) if values.size else (0, 1)
        if limits[b, 1] <= limits[b, 0]:
            limits[b, 1] = limits[b, 0] + 1
    return limits


def to_uint8(block: np.ndarray, limits: np.ndarray | None) -> np.ndarray:
    """Bands x rows x columns stretched linearly from each band's ``limits`` to 0..255 (None: as read)."""
    if limits is None:
        return block
    low, high = limits[:, 0, None, None], limits[:, 1, None, None]
    scaled = (block.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def fill_nodata(crop: np.ndarray, valid: np.ndarray, options: SceneOptions) -> np.ndarray:
    """A window with some nodata, as the model should see it (see ``SceneOptions.nodata_fill``)."""
    if options.nodata_fill == "none" or valid.all():
        return crop
    if options.nodata_fill == "mirror":
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        if valid[y0:y1, x0:x1].all():
            h, w = valid.shape
            return np.pad(crop[:, y0:y1, x0:x1], ((0, 0), (y0, h - y1), (x0, w - x1)), mode="symmetric")
    return np.where(valid[None], crop, options.fill_colour)


def read_strips(
    src, options: SceneOptions, limits, ys: WindowAxis, path: Path, rows: range
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 image, valid mask) of each row of windows in ``rows``, full width. The next one is read in a
    thread while this one is predicted: GDAL releases the GIL while it reads and decodes."""

    def read(y: int) -> tuple[np.ndarray, np.ndarray]:
        win = Window(0, y, src.width, ys.span)
        try:
            image = to_uint8(src.read(list(options.bands), window=win), limits)
            return image, src.dataset_mask(window=win) > 0
        except RasterioError as err:
            raise SceneError(f"'{path}': cannot read rows {y}..{y + ys.span}: {err}") from err

    starts = [ys.starts[k] for k in rows]
    with ThreadPoolExecutor(1, thread_name_prefix="scene-reader") as pool:
        ahead = pool.submit(read, starts[0])
        for y in [*starts[1:], None]:
            current = ahead.result()
            if y is not None:
                ahead = pool.submit(read, y)
            yield current


# --- writing maps -------------------------------------------------------------------------------------------


def colormap(classes: ClassTable, output_values: str) -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table entries: the project's figure palette, keyed by what the map stores."""
    keys = classes.values if output_values == "naic" else range(classes.num_classes)
    return {int(k): (*(int(c) for c in PALETTE[i % len(PALETTE)]), 255) for i, k in enumerate(keys)}


def output_encoding(classes: ClassTable, output_values: str) -> tuple[str, int, np.ndarray]:
    """(dtype, nodata, lookup from class index to stored value; index 255 -> nodata)."""
    if output_values == "naic":
        lut = np.zeros(256, dtype=np.uint16)
        lut[: classes.num_classes] = classes.values
        return "uint16", 0, lut
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[: classes.num_classes] = np.arange(classes.num_classes, dtype=np.uint8)
    return "uint8", IGNORE_INDEX, lut


def map_profile(src, dtype: str, nodata: int) -> dict:
    """The creation options of a one-band map of ``src``'s size and place."""
    return {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": 1,
        "dtype": dtype,
        "nodata": nodata,
        "crs": src.crs,
        "transform": src.transform,
    }


@contextlib.contextmanager
def strips_file(target: Path) -> Iterator[str]:
    """A temporary plain GeoTIFF beside ``target`` that the rows are written into, removed afterwards."""
    fd, strips = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".strips.tmp", dir=target.parent)
    os.close(fd)
    try:
        yield strips
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(strips)


def write_cog(strips: str, target: Path, overviews: str) -> None:
    """Overviews by ``overviews`` resampling: MODE for classes, AVERAGE for the confidence."""
    rasterio.shutil.copy(
        strips,
        target,
        driver="COG",
        COMPRESS="DEFLATE",
        BLOCKSIZE=COG_BLOCK,
        OVERVIEW_RESAMPLING=overviews,
        NUM_THREADS="ALL_CPUS",  # compression and overviews: the model is done with the cores by now
    )
