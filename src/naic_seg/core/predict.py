"""Prediction: one model or an ensemble, optional flip / multi-scale TTA, sliding windows for big tiles.

Every combination averages logits before the arg-max. Tiles stream through a DataLoader and come out
one class map at a time, so memory does not grow with the number of tiles.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from naic_seg.core.checkpoint import CheckpointError
from naic_seg.core.data import ManifestDataset, Normalizer, check_manifest_files, collate
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.training import _amp_dtype, _switch, resolve_device

log = logging.getLogger(__name__)

TTA_MODES = ("none", "flip", "flip_scale")


@dataclass
class PredictConfig:
    tta: str = "none"  # none (the reference) | flip (h + v flips) | flip_scale (flips x scales)
    tta_scales: Sequence[float] = (0.75, 1.0, 1.25)
    input_size: int | None = None  # None: the checkpoint's training size
    mode: str = "auto"  # resize | slide | auto (slide for tiles larger than slide_above)
    slide_above: int = 1024
    window: int | None = None  # sliding window in tile pixels; None: input_size
    overlap: float = 0.25
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | str = "auto"

    def __post_init__(self):
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {self.tta!r}")
        if self.mode not in ("resize", "slide", "auto"):
            raise ValueError(f"mode must be resize, slide or auto, got {self.mode!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")


def load_models(
    checkpoints: Sequence[dict], device: torch.device, channels_last: bool
) -> list[torch.nn.Module]:
    """Rebuild each checkpoint's model and load its weights strictly; a misfit names the checkpoint."""
    models = []
    classes = None
    for ckpt in checkpoints:
        source = ckpt.get("source", ckpt.get("stage") or "checkpoint")
        config = {k: v for k, v in ckpt["model"].items() if k != "pretrained"}
        try:
            model = build_model(**config, pretrained=None)
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except (RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(f"checkpoint '{source}' does not fit its model {config}: {err}") from err
        if classes is not None and ckpt.get("classes") != classes:
            raise CheckpointError(f"checkpoint '{source}' was trained on another class table than the first")
        classes = ckpt.get("classes")
        model.eval().to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        models.append(model)
    return models


def tta_views(mode: str, scales: Sequence[float]) -> list[tuple[float, tuple[int, ...]]]:
    """(scale, flip dims) pairs; logits of every view are averaged."""
    flips = [(), (3,), (2,)] if mode in ("flip", "flip_scale") else [()]
    use_scales = list(scales) if mode == "flip_scale" else [1.0]
    return [(s, f) for s in use_scales for f in flips]


class Predictor:
    """Logits for normalised NCHW batches, averaged over models and TTA views."""

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        cfg: PredictConfig,
        input_size: int | None,
        num_classes: int,
        device: torch.device,
    ):
        self.models, self.cfg, self.device = list(models), cfg, device
        self.input_size, self.num_classes = input_size, num_classes
        self.views = tta_views(cfg.tta, cfg.tta_scales)
        self.amp_dtype = _amp_dtype(cfg.amp, device)
        self.channels_last = _switch(cfg.channels_last, device.type == "cuda")

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Mean logits at the input's own resolution (float32)."""
        size = images.shape[-2:]
        total = torch.zeros(images.shape[0], self.num_classes, *size, device=images.device)
        for scale, dims in self.views:
            x = images
            if scale != 1.0:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            if dims:
                x = x.flip(dims)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for model in self.models:
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    out = model(x).float()
                if dims:
                    out = out.flip(dims)
                if out.shape[-2:] != size:
                    out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
                total += out
        return total / (len(self.views) * len(self.models))

    def slide(self, image: torch.Tensor, window: int, overlap: float) -> torch.Tensor:
        """Logits of one 1xCxHxW tile from overlapping ``window`` crops, each resized to the input size."""
        _, _, h, w = image.shape
        stride = max(1, math.ceil(window * (1 - overlap)))
        ys = _starts(h, window, stride)
        xs = _starts(w, window, stride)
        total = torch.zeros(1, self.num_classes, h, w, device=image.device)
        count = torch.zeros(1, 1, h, w, device=image.device)
        crops, places = [], []
        for y in ys:
            for x in xs:
                crops.append(image[..., y : y + window, x : x + window])
                places.append((y, x))
        for i in range(0, len(crops), self.cfg.batch_size):
            batch = torch.cat(crops[i : i + self.cfg.batch_size])
            wh = batch.shape[-2:]
            if self.input_size and tuple(wh) != (self.input_size, self.input_size):
                batch = F.interpolate(
                    batch, size=(self.input_size,) * 2, mode="bilinear", align_corners=False
                )
            out = self.logits(batch)
            if out.shape[-2:] != wh:
                out = F.interpolate(out, size=wh, mode="bilinear", align_corners=False)
            for (y, x), logit in zip(places[i : i + self.cfg.batch_size], out, strict=True):
                total[..., y : y + wh[0], x : x + wh[1]] += logit
                count[..., y : y + wh[0], x : x + wh[1]] += 1
        return total / count


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def _class_maps(logits: torch.Tensor, sizes: list[list[int]]) -> Iterator[np.ndarray]:
    """uint8 class maps, each resized back to its tile's own size.

    One tile at a time: resizing a whole batch at once made the resident set spike by hundreds of MB
    over a 100,000-tile run (measured with benchmarks/bench_submit.py).
    """
    for logit, (h, w) in zip(logits, sizes, strict=True):
        logit = logit[None]
        if logit.shape[-2:] != (h, w):
            logit = F.interpolate(logit, size=(h, w), mode="bilinear", align_corners=False)
        # max().indices gives argmax's result at a tenth of its CPU cost
        yield logit.max(1).indices[0].to(torch.uint8).cpu().numpy()


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def predict_manifest(
    manifest: Sequence[dict],
    checkpoints: Sequence[dict],
    cfg: PredictConfig,
    classes: ClassTable,
    progress_every: int = 500,
) -> Iterator[tuple[str, bytes]]:
    """``(tile id, PNG bytes of the uint8 class map)`` for every manifest entry, in order.

    Models are built and checked now (a misfit raises here); tiles are read and predicted lazily.
    """
    if not checkpoints:
        raise ValueError("no checkpoint to predict with")
    check_manifest_files(manifest)
    device = resolve_device(cfg.device)
    models = load_models(checkpoints, device, _switch(cfg.channels_last, device.type == "cuda"))
    input_size = cfg.input_size or checkpoints[0].get("preprocess", {}).get("input_size")
    predictor = Predictor(models, cfg, input_size, classes.num_classes, device)
    return _predict_stream(manifest, predictor, classes, progress_every)


def _predict_stream(manifest, predictor: Predictor, classes: ClassTable, progress_every: int):
    cfg, device, input_size = predictor.cfg, predictor.device, predictor.input_size
    normalize = Normalizer().to(device)
    window = cfg.window or input_size
    # Tiles come resized to the input size and batched; in slide mode (or, in auto mode, tiles with a
    # side above slide_above) they come whole and are predicted window by window.
    slide = cfg.mode == "slide"
    dataset = ManifestDataset(
        manifest,
        classes,
        None if slide else input_size,
        label_size=None,
        keep_above=cfg.slide_above if cfg.mode == "auto" else None,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.workers else None,
    )
    started, done = time.perf_counter(), 0
    for batch in loader:
        sizes = batch["orig_size"].tolist()
        images = batch["image"]
        groups = [images] if isinstance(images, torch.Tensor) else [image[None] for image in images]
        position = 0
        for group in groups:
            x = normalize(group.to(device, non_blocking=True))
            if slide or max(x.shape[-2:]) > cfg.slide_above:
                logits = torch.cat(
                    [predictor.slide(x[j : j + 1], window, cfg.overlap) for j in range(len(x))]
                )
            else:
                if input_size and tuple(x.shape[-2:]) != (input_size, input_size):
                    x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
                logits = predictor.logits(x)
            for pred in _class_maps(logits, sizes[position : position + len(logits)]):
                entry = manifest[int(batch["index"][position])]
                yield Path(entry["filename"]).stem, encode_png(pred)
                position += 1
        done += len(sizes)
        if progress_every and done % progress_every < len(sizes):
            rate = done / (time.perf_counter() - started)
            log.info(
                "predicted %d/%d tiles (%.1f tiles/s, ETA %.0f s)",
                done,
                len(manifest),
                rate,
                (len(manifest) - done) / rate,
            )
