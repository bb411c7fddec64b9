"""The mapping loop: one scene's windows read strip by strip, batched through the model, blended and written.

Windows go through ``logits_fn`` in full batches taken in row-major order (a batch may span two rows of
windows), then through the :class:`~naic_seg.core.scenes.geometry.Blender` in the same order; an all-nodata
window costs no forward pass but is blended in its turn. Finished rows are written as soon as a row of
windows is done, into a temporary GeoTIFF that becomes the COG (renamed into place) at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from naic_seg.core.atomic import atomic_path
from naic_seg.core.labels import ClassTable
from naic_seg.core.progress import Progress
from naic_seg.core.scenes.geometry import Blender, FinishedRows, WindowAxis, pad_to
from naic_seg.core.scenes.io import (
    CONFIDENCE_NODATA,
    GDAL_CACHE_MB,
    colormap,
    fill_nodata,
    inspect_scene,
    map_profile,
    output_encoding,
    read_strips,
    stretch_limits,
    strips_file,
    write_cog,
)
from naic_seg.core.scenes.options import SceneInfo, SceneOptions

log = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


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
        strips = [stack.enter_context(strips_file(t)) for t in targets]
        with rasterio.open(scene) as src, contextlib.ExitStack() as files:
            dst = files.enter_context(rasterio.open(strips[0], "w", **map_profile(src, dtype, nodata)))
            dst.write_colormap(1, colormap(classes, options.output_values))  # before any pixel
            conf = None
            if confidence_target is not None:
                conf_profile = map_profile(src, "uint8", CONFIDENCE_NODATA)
                conf = files.enter_context(rasterio.open(strips[1], "w", **conf_profile))
            result = map_into(src, dst, info, logits_fn, classes, options, lut, conf)
        for strip, final, overviews in zip(strips, finals, ("MODE", "AVERAGE"), strict=False):
            write_cog(strip, final, overviews)
    result.seconds = time.perf_counter() - started
    _log_mapped(info, result, target)
    return result


def _log_mapped(info: SceneInfo, result: SceneResult, target: Path) -> None:
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


class _RowWriter:
    """Writes finished rows: stored values through ``lut`` into ``dst``, confidences into ``conf_dst``."""

    def __init__(self, dst, lut: np.ndarray, conf_dst=None):
        self.dst, self.lut, self.conf_dst = dst, lut, conf_dst

    def write(self, rows: FinishedRows) -> None:
        window = Window(0, rows.y, self.dst.width, len(rows.classes))
        self.dst.write(self.lut[rows.classes][None], window=window)
        if self.conf_dst is not None:
            rows.confidence[rows.invalid] = CONFIDENCE_NODATA
            self.conf_dst.write(rows.confidence[None], window=window)


class _Batches:
    """Windows queued for the next forward pass; when it runs they are blended in their order and each row
    of windows in ``rows`` is written once its last window is in."""

    def __init__(self, logits_fn: LogitsFn, blender: Blender, writer: _RowWriter, rows: range, progress):
        self.logits_fn, self.blender, self.writer, self.rows = logits_fn, blender, writer, rows
        self.progress, self.last_column = progress, len(blender.xs.starts) - 1
        self.masks: dict[int, np.ndarray] = {}  # valid-pixel mask of each row of windows read, not written
        self.pending: list[tuple[int, int, np.ndarray | None]] = []
        self.batch = self.skipped = 0  # windows to predict in ``pending``; windows skipped in ``rows``

    def queue(self, k: int, j: int, crop: np.ndarray | None, batch_size: int) -> None:
        """Window ``(k, j)``: its model input, or None for a window of nodata only (skipped)."""
        self.pending.append((k, j, crop))
        if crop is None:
            self.skipped += k in self.rows
            return
        self.batch += 1
        if self.batch == batch_size:
            self.run()

    def run(self) -> None:
        crops = [crop for _, _, crop in self.pending if crop is not None]
        logits = iter(self.logits_fn(torch.from_numpy(np.stack(crops))).float().numpy() if crops else ())
        for k, j, crop in self.pending:
            self.blender.add(k, j, None if crop is None else next(logits))
            if j == self.last_column and k in self.rows:
                self.writer.write(self.blender.finish_row(k, self.masks.pop(k)))
        self.progress.add(len(self.pending))
        self.pending.clear()
        self.batch = 0


def _window_progress(name: str, total: int, every_s: float) -> Progress:
    """A bar of windows on a terminal; otherwise a line every ``every_s`` s: windows done, windows/s, ETA."""
    return Progress(
        log, total, every_s=every_s, bar_unit="win", desc=name, leave=False, label=f"{name}:", unit="windows"
    )


def map_into(src, dst, info, logits_fn, classes, options, lut, conf_dst=None, rows=None) -> SceneResult:
    """Map the open scene ``src`` into the open GeoTIFF ``dst`` (and confidences into ``conf_dst``).
    ``rows``: the rows of windows written (default: all); the row above them runs too, unwritten: its carry
    gives theirs the sums a whole-scene pass adds, in its order (overlap <= 0.5)."""
    width, win = src.width, options.window
    ys, xs = WindowAxis.of(src.height, win, options.stride), WindowAxis.of(width, win, options.stride)
    rows = rows if rows is not None else range(len(ys.starts))
    run_rows = range(max(rows.start - 1, 0), rows.stop)
    blender = Blender(classes.num_classes, width, ys, xs, confidence=conf_dst is not None)
    name = info.name
    progress = _window_progress(name, len(run_rows) * len(xs.starts), options.progress_every_s)
    batches = _Batches(logits_fn, blender, _RowWriter(dst, lut, conf_dst), rows, progress)
    strips = read_strips(src, options, stretch_limits(src, options), ys, info.path, run_rows)
    try:
        for k, (image, mask) in zip(run_rows, strips, strict=True):
            if k in rows:  # the row above a band is not written: no mask to keep
                batches.masks[k] = mask
            # Nothing but skipped windows pending costs nothing to run; rows of nodata-only windows behind a
            # pending batch would pile up their masks: run it short.
            if batches.pending and (batches.batch == 0 or len(batches.masks) > 2):
                batches.run()
            for j, x in enumerate(xs.starts):
                valid = mask[:, x : x + win]
                crop = fill_nodata(image[:, :, x : x + win], valid, options) if valid.any() else None
                batches.queue(k, j, None if crop is None else pad_to(crop, win), options.batch_size)
        batches.run()
    finally:
        progress.close()
    windows, counts = len(rows) * len(xs.starts), blender.counts.tolist()
    return SceneResult(name, width, src.height, windows, batches.skipped, 0.0, counts, blender.nodata_pixels)
