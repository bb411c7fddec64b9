"""Whole-scene mapping: a GeoTIFF scene in, a Cloud-Optimized GeoTIFF land-cover map out.

The scene is never read whole and its logits are never held whole. Windows of ``window`` scene pixels,
``overlap`` apart, are read one row of windows at a time (a full-width strip of ``window`` rows, the next one
read in a thread meanwhile), batched through ``logits_fn`` and blended window by window (see
:class:`_Blender`): a pixel is final, arg-maxed and kept as one byte, as soon as no later window weighs it;
only the overlap rows shared with the next row of windows are carried as sums, ``classes x (window - stride)
x width`` floats. Memory thus does not grow with the scene's height, and with its width only by that carry
(41 MB for 8 classes, window 256, overlap 0.25, 20,000 px wide).

The blend weight of a window is 1 in its middle and falls along a squared-sine ramp to 0 at the sides that
face another window, keeping an outer quarter of the overlap at weight 0: a CNN sees least context at a
window's border, and there a neighbouring window always has a better view. Sides on the scene's own border
keep weight 1, so every pixel has weight from some window. Neighbouring ramps add up to 1 (the last window,
flush with the scene's end, shifts its ramp to mirror its neighbour's), so logits that agree across windows
are reproduced exactly: for a model
whose receptive field fits in the zero margin the blended map equals one whole-scene forward pass.

Bad scenes are refused up front (:func:`check_scenes` lists every one, naming the file and the reason)
before any window is predicted; a read error found only while mapping names the file and the window. Maps
are written to a temporary GeoTIFF, converted to a COG (GDAL's COG driver, overviews by mode) and
renamed into place, so a killed run leaves no partial map.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from naic_seg.core.atomic import atomic_path
from naic_seg.core.labels import IGNORE_INDEX, PALETTE, ClassTable
from naic_seg.core.metrics import confusion_matrix, scores
from naic_seg.core.normalization import mean_colour

log = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
SCENE_SUFFIXES = (".tif", ".tiff")
LABEL_SUFFIX = "_label"
OUTPUT_VALUES = ("index", "naic")
NODATA_FILLS = ("mirror", "mean", "none")
# GDAL's block cache: the default (5 % of RAM) would keep every written block of a big map resident.
GDAL_CACHE_MB = 32
COG_BLOCK = 512
CONFIDENCE_NODATA = 0


class SceneError(ValueError):
    """A scene (or its label) that cannot be mapped, named with the reason."""


@dataclass
class SceneOptions:
    """How a scene is cut and what the map holds.

    ``bands``: the 1-based bands to use as R, G, B (None: 1, 2, 3). ``scaling``: None maps uint8 scenes only;
    ``{"method": "percentile", "low": 2, "high": 98}`` stretches each band linearly between those percentiles
    of its valid pixels (from a decimated read) to 0..255, for uint16 or float imagery.
    ``output_values``: ``index`` writes class indices as uint8 (nodata 255); ``naic`` writes the stored class
    values (100..800, which do not fit a byte) as uint16 (nodata 0, the contest's "unlabelled").
    ``nodata_fill``: what the model sees in the nodata part of a window (the map stays nodata there):
    ``mirror`` mirrors the window's valid part out when it is a rectangle (a scene's edge, a tile among
    nodata) and otherwise paints nodata ``fill_colour`` (the normalisation's mean: 0 once normalised);
    ``mean`` always paints; ``none`` leaves the pixels as read (often black, which no training tile had).
    """

    window: int | None = None  # scene pixels per window; needed to map, not to read maps back
    overlap: float = 0.25
    batch_size: int = 8
    bands: Sequence[int] | None = None
    scaling: dict | None = None
    output_values: str = "index"
    progress_every_s: float = 10.0
    nodata_fill: str = "mirror"
    fill_colour: Sequence[int] | None = None  # None: ImageNet's mean colour

    def __post_init__(self):
        if self.window is not None:
            if int(self.window) < 8:
                raise ValueError(f"window must be at least 8 scene pixels, got {self.window}")
            self.window = int(self.window)
        if not 0 <= self.overlap <= 0.5:  # more would make three windows overlap
            raise ValueError(f"overlap must be in [0, 0.5], got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.nodata_fill not in NODATA_FILLS:
            raise ValueError(f"nodata_fill must be one of {NODATA_FILLS}, got {self.nodata_fill!r}")
        colour = self.fill_colour if self.fill_colour is not None else mean_colour(None)
        self.fill_colour = np.asarray(colour, dtype=np.uint8).reshape(3, 1, 1)
        if self.output_values not in OUTPUT_VALUES:
            raise ValueError(f"output_values must be one of {OUTPUT_VALUES}, got {self.output_values!r}")
        self.bands = tuple(int(b) for b in (self.bands or (1, 2, 3)))
        if len(self.bands) != 3:
            raise ValueError(f"bands must name three bands (R, G, B), got {list(self.bands)}")
        if self.scaling is not None:
            method = self.scaling.get("method")
            if method != "percentile":
                raise ValueError(f"scaling.method must be 'percentile', got {method!r}")
            low, high = self.scaling.get("low", 2), self.scaling.get("high", 98)
            if not 0 <= low < high <= 100:
                raise ValueError(f"scaling needs 0 <= low < high <= 100, got low={low} high={high}")

    @property
    def stride(self) -> int:
        return max(1, math.ceil(self.window * (1 - self.overlap)))


@dataclass(frozen=True)
class SceneInfo:
    path: Path
    width: int
    height: int
    dtype: str
    label: Path | None

    @property
    def name(self) -> str:
        return self.path.stem


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
        try:
            with rasterio.open(label) as lab:
                if (lab.width, lab.height) != (width, height):
                    raise SceneError(
                        f"label '{label}' is {lab.width} x {lab.height}, "
                        f"its scene '{path}' {width} x {height}"
                    )
        except RasterioError as err:
            raise SceneError(f"label '{label}' is not readable: {err}") from err
    return SceneInfo(path, width, height, dtype, label)


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


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride``, the last one flush with the end."""
    if length <= window:
        return [0]
    return [*range(0, length - window, stride), length - window]


def blend_profile(
    window: int, overlap_px: int, taper_start: bool, taper_end: bool, lead: int = 0
) -> np.ndarray:
    """1-D weight of a window: 0 over a quarter of the overlap at a tapered side, a squared-sine ramp over
    the middle half of the overlap, 1 elsewhere. Mirror ramps of two neighbours add up to 1. ``lead``: a
    window that starts ``lead`` pixels less than a stride after its neighbour (the last one, flush with the
    scene's end) keeps weight 0 over those pixels too, so that its ramp still mirrors the neighbour's."""
    profile = np.ones(window, dtype=np.float32)
    margin = overlap_px // 4
    ramp_len = overlap_px - 2 * margin
    ramp = np.sin(np.pi / 2 * (np.arange(ramp_len) + 0.5) / max(ramp_len, 1)) ** 2
    if taper_start:
        profile[: lead + margin] = 0
        profile[lead + margin : lead + margin + ramp_len] = ramp
    if taper_end:
        profile[window - margin :] = 0
        profile[window - margin - ramp_len : window - margin] = ramp[::-1]
    return profile


def _stretch_limits(src, options: SceneOptions) -> np.ndarray | None:
    """Per-band (low, high) percentiles of valid pixels from a decimated read (the scene is never read
    whole: GDAL decimates, or uses overviews when the file has them)."""
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


def _to_uint8(block: np.ndarray, limits: np.ndarray | None) -> np.ndarray:
    if limits is None:
        return block
    low, high = limits[:, 0, None, None], limits[:, 1, None, None]
    scaled = (block.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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


class _Progress:
    """A tqdm bar on a terminal; otherwise a log line every ``every_s`` seconds (windows/s, ETA)."""

    def __init__(self, name: str, total: int, every_s: float):
        self.name, self.total, self.every_s = name, total, every_s
        self.done, self.started, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name, unit="win", leave=False)

    def add(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            rate = self.done / (now - self.started)
            log.info(
                "%s: %d/%d windows (%.1f windows/s, ETA %.0f s)",
                self.name,
                self.done,
                self.total,
                rate,
                (self.total - self.done) / max(rate, 1e-9),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class SceneResult:
    """What mapping one scene did: sizes, window counts, time and pixels per class (nodata excluded)."""

    name: str
    width: int
    height: int
    windows: int
    windows_skipped: int
    seconds: float
    class_pixels: list[int]
    nodata_pixels: int
    extra: dict = field(default_factory=dict)

    @property
    def megapixels_per_s(self) -> float:
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)


def _fill_nodata(crop: np.ndarray, valid: np.ndarray, options: SceneOptions) -> np.ndarray:
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


def _pad_to(window_image: np.ndarray, size: int) -> np.ndarray:
    """A window cut short by a scene smaller than ``size`` is mirrored out to full size, so the model
    sees the scene at the same scale as everywhere else (a resize would change it)."""
    _, h, w = window_image.shape
    if h == size and w == size:
        return window_image
    return np.pad(window_image, ((0, 0), (0, size - h), (0, size - w)), mode="symmetric")


def map_scene(
    scene: str | os.PathLike,
    target: str | os.PathLike,
    logits_fn: LogitsFn,
    classes: ClassTable,
    options: SceneOptions,
    confidence_target: str | os.PathLike | None = None,
) -> SceneResult:
    """Map one scene into the COG ``target`` (atomically). ``logits_fn``: uint8 N x 3 x h x w (CPU) ->
    float32 N x C x h x w logits, with C = ``classes.num_classes``. With ``confidence_target`` a second COG
    is written there (atomically too): the top class's softmax probability of the same blended logits, as
    ``round(255 p)`` in a byte, nodata 0 where the map is nodata (p >= 1/C, so 0 is never a confidence)."""
    scene, target = Path(scene), Path(target)
    if options.window is None:
        raise ValueError("SceneOptions.window is needed to map a scene")
    info = inspect_scene(scene, options)
    dtype, nodata, lut = output_encoding(classes, options.output_values)
    started = time.perf_counter()
    targets = [target] + ([Path(confidence_target)] if confidence_target is not None else [])
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), contextlib.ExitStack() as stack:
        finals = [stack.enter_context(atomic_path(t)) for t in targets]
        strips = [stack.enter_context(_strips_file(t)) for t in targets]
        with rasterio.open(scene) as src:
            profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1}
            profile |= {"crs": src.crs, "transform": src.transform}
            with contextlib.ExitStack() as files:
                dst = files.enter_context(
                    rasterio.open(strips[0], "w", dtype=dtype, nodata=nodata, **profile)
                )
                dst.write_colormap(1, colormap(classes, options.output_values))  # before any pixel
                conf = None
                if confidence_target is not None:
                    conf = files.enter_context(
                        rasterio.open(strips[1], "w", dtype="uint8", nodata=CONFIDENCE_NODATA, **profile)
                    )
                result = _map_into(src, dst, info, logits_fn, classes, options, lut, conf)
        for strip, final, overviews in zip(strips, finals, ("MODE", "AVERAGE"), strict=False):
            _write_cog(strip, final, overviews)
    result.seconds = time.perf_counter() - started
    log.info(
        "%s: %d x %d mapped in %.1f s (%.2f megapixels/s; %d windows, %d skipped as nodata) -> %s",
        info.name,
        info.width,
        info.height,
        result.seconds,
        result.megapixels_per_s,
        result.windows,
        result.windows_skipped,
        target,
    )
    return result


@contextlib.contextmanager
def _strips_file(target: Path) -> Iterator[str]:
    """A temporary plain GeoTIFF beside ``target`` that the rows are written into, removed afterwards."""
    fd, strips = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".strips.tmp", dir=target.parent)
    os.close(fd)
    try:
        yield strips
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(strips)


def _write_cog(strips: str, target: Path, overviews: str) -> None:
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


@dataclass(frozen=True)
class _Axis:
    """The windows along one axis of a scene and the pixels each one finishes.

    Window ``i`` finishes its pixels ``leads[i] .. ends[i]`` (window coordinates): no later window along this
    axis weighs them. These ranges tile the axis without gap or overlap. The last window, flush with the
    scene's end, usually starts less than a stride after its neighbour; its ramp is shifted by its lead so
    that it still mirrors the neighbour's (weights add up to 1) and the overlap carried from one window to
    the next is never more than ``window - stride`` pixels.
    """

    starts: list[int]
    span: int  # the window's length on this axis (the scene's, when the scene is shorter)
    stride: int
    leads: list[int]
    ends: list[int]
    profiles: list[np.ndarray]

    @classmethod
    def of(cls, length: int, window: int, stride: int) -> _Axis:
        starts = window_starts(length, window, stride)
        last, span = len(starts) - 1, min(window, length)
        leads = [0] + [prev + stride - start for prev, start in zip(starts, starts[1:], strict=False)]
        profiles = [
            blend_profile(window, window - stride, i > 0, i < last, lead=leads[i])[:span]
            for i in range(len(starts))
        ]
        return cls(starts, span, stride, leads, [stride] * last + [span], profiles)

    @property
    def carried(self) -> int:
        """Pixels a window shares with the next one along this axis (0 with one window)."""
        return self.span - self.stride if len(self.starts) > 1 else 0


def _argmax(acc: np.ndarray) -> np.ndarray:
    """uint8 arg-max over the classes (axis 0), ties to the lower class as ``np.argmax``. torch's ``max``
    over a dimension runs on both cores and is twice as fast here as numpy's (and torch's own argmax)."""
    return torch.from_numpy(acc).max(0).indices.to(torch.uint8).numpy()


def _argmax_confidence(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_argmax` and the top class's softmax probability, ``1 / sum_c exp(l_c - l_max)``, as
    ``round(255 p)`` in a byte."""
    logits = torch.from_numpy(acc)
    top = logits.max(0)
    total = torch.exp(logits - top.values).sum(0)
    confidence = total.reciprocal_().mul_(255).round_().to(torch.uint8)
    return top.indices.to(torch.uint8).numpy(), confidence.numpy()


class _Blender:
    """Blends windows taken in row-major order, in memory that does not grow with the scene's height and
    grows with its width only by the overlap rows carried from one row of windows to the next.

    ``buf`` (classes x window x window floats) holds the current window's pixels: the blend of every window
    so far that weighs them. Once a window is added, the pixels it finishes (see :class:`_Axis`) are final
    for this row of windows: in the rows that the row of windows finishes they go, as class indices, into
    ``band`` (a byte per pixel, full width), written when the row of windows is done; in the rows the next
    row of windows shares they go, as sums, into ``carry`` (classes x carried rows x width floats).
    With ``conf_dst`` the top class's probability of the same finished sums goes into ``conf_band`` (one
    more byte per pixel of the band) and is written beside the classes: no other memory, no seams.
    """

    def __init__(
        self, num_classes: int, width: int, ys: _Axis, xs: _Axis, dst, lut: np.ndarray, conf_dst=None
    ):
        self.ys, self.xs, self.width, self.dst, self.lut = ys, xs, width, dst, lut
        self.buf = np.zeros((num_classes, ys.span, xs.span), dtype=np.float32)
        self.carry = np.zeros((num_classes, ys.carried, width), dtype=np.float32)
        self.band = np.zeros((ys.span, width), dtype=np.uint8)
        self.conf_dst = conf_dst
        self.conf_band = None if conf_dst is None else np.zeros((ys.span, width), dtype=np.uint8)
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.nodata_pixels = 0

    def add(self, k: int, j: int, logit: np.ndarray | None) -> None:
        """Window ``(k, j)`` (row, column of windows); ``logit`` None for a window skipped as all nodata."""
        ys, xs, buf = self.ys, self.xs, self.buf
        x, w = xs.starts[j], xs.span
        fresh = 0  # the first buffer column that no earlier window of this row weighed
        if j > 0:  # slide the buffer right by one window
            shift = x - xs.starts[j - 1]
            fresh = w - shift
            buf[:, :, :fresh] = buf[:, :, shift:]  # numpy buffers overlapping operands
            buf[:, :, fresh:] = 0
        else:
            buf.fill(0)
        if k > 0 and ys.carried:
            top = ys.leads[k]
            buf[:, top : top + ys.carried, fresh:] += self.carry[:, :, x + fresh : x + w]
        if logit is not None:
            buf += logit[:, : ys.span, :w] * (ys.profiles[k][:, None] * xs.profiles[j][None, :])
        lx, rx, ly, ry = xs.leads[j], xs.ends[j], ys.leads[k], ys.ends[k]
        if self.conf_band is None:
            self.band[ly:ry, x + lx : x + rx] = _argmax(buf[:, ly:ry, lx:rx])
        else:
            cls, conf = _argmax_confidence(buf[:, ly:ry, lx:rx])
            self.band[ly:ry, x + lx : x + rx], self.conf_band[ly:ry, x + lx : x + rx] = cls, conf
        if k < len(ys.starts) - 1:
            self.carry[:, :, x + lx : x + rx] = buf[:, ys.stride :, lx:rx]

    def finish_row(self, k: int, valid: np.ndarray) -> None:
        """Nodata, count and write the rows that row ``k`` of windows finishes."""
        ly, ry = self.ys.leads[k], self.ys.ends[k]
        cls = self.band[ly:ry]
        invalid = ~valid[ly:ry]
        cls[invalid] = IGNORE_INDEX
        self.counts += np.bincount(cls[~invalid], minlength=len(self.counts))[: len(self.counts)]
        self.nodata_pixels += int(invalid.sum())
        rows = Window(0, self.ys.starts[k] + ly, self.width, ry - ly)
        self.dst.write(self.lut[cls][None], window=rows)
        if self.conf_band is not None:
            conf = self.conf_band[ly:ry]
            conf[invalid] = CONFIDENCE_NODATA
            self.conf_dst.write(conf[None], window=rows)


def _strips(
    src, options: SceneOptions, limits, ys: _Axis, path: Path, rows: range
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 image, valid mask) of each row of windows in ``rows``, full width. The next one is read in a
    thread while this one is predicted: GDAL releases the GIL while it reads and decodes."""

    def read(y: int) -> tuple[np.ndarray, np.ndarray]:
        win = Window(0, y, src.width, ys.span)
        try:
            image = _to_uint8(src.read(list(options.bands), window=win), limits)
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


def _map_into(src, dst, info, logits_fn, classes, options, lut, conf_dst=None, rows=None) -> SceneResult:
    """Windows go through ``logits_fn`` in full batches taken in row-major order (a batch may span two rows
    of windows), then through the blender in the same order; an all-nodata window costs no forward pass but
    is blended in its turn. ``rows``: the rows of windows written (default: all); the row above them runs
    too, unwritten: its carry gives theirs the sums a whole-scene pass adds, in its order (overlap <= 0.5)."""
    width, height, win = src.width, src.height, options.window
    ys, xs = _Axis.of(height, win, options.stride), _Axis.of(width, win, options.stride)
    rows = rows if rows is not None else range(len(ys.starts))
    run_rows = range(max(rows.start - 1, 0), rows.stop)
    blender = _Blender(classes.num_classes, width, ys, xs, dst, lut, conf_dst)
    limits = _stretch_limits(src, options)
    masks: dict[int, np.ndarray] = {}  # valid-pixel mask of each row of windows read but not yet written
    pending: list[tuple[int, int, np.ndarray | None]] = []
    last_column, skipped, batch = len(xs.starts) - 1, 0, 0
    progress = _Progress(info.name, len(run_rows) * len(xs.starts), options.progress_every_s)

    def run() -> None:
        crops = [crop for _, _, crop in pending if crop is not None]
        logits = iter(logits_fn(torch.from_numpy(np.stack(crops))).float().numpy() if crops else ())
        for k, j, crop in pending:
            blender.add(k, j, None if crop is None else next(logits))
            if j == last_column and k in rows:
                blender.finish_row(k, masks.pop(k))
        progress.add(len(pending))
        pending.clear()

    strips = _strips(src, options, limits, ys, info.path, run_rows)
    try:
        for k, (image, mask) in zip(run_rows, strips, strict=True):
            if k in rows:  # the row above a band is not written: no mask to keep
                masks[k] = mask
            # Nothing but skipped windows pending costs nothing to run; rows of nodata-only windows behind a
            # pending batch would pile up their masks: run it short.
            if pending and (batch == 0 or len(masks) > 2):
                run()
                batch = 0
            for j, x in enumerate(xs.starts):
                if not mask[:, x : x + win].any():
                    skipped += k in rows
                    pending.append((k, j, None))
                    continue
                crop = _fill_nodata(image[:, :, x : x + win], mask[:, x : x + win], options)
                pending.append((k, j, _pad_to(crop, win)))
                batch += 1
                if batch == options.batch_size:
                    run()
                    batch = 0
        run()
    finally:
        progress.close()
    return SceneResult(
        info.name,
        width,
        height,
        len(rows) * len(xs.starts),
        skipped,
        0.0,
        blender.counts.tolist(),
        blender.nodata_pixels,
    )


# --- reading maps back: areas, scores, quick-looks ----------------------------------------------------------


def _row_blocks(height: int, rows: int = COG_BLOCK) -> Iterator[tuple[int, int]]:
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
        for y, rows in _row_blocks(src.height):
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
        for y, rows in _row_blocks(pred_src.height):
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
        image = _to_uint8(image, _stretch_limits(src, options))
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
