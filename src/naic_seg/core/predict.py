"""The prediction core: models + TTA + windows -> logits and class maps, whatever the output format.

One model or an ensemble, optional flip / multi-scale TTA, sliding windows for big tiles; every combination
averages logits before the arg-max. :class:`Predictor` turns uint8 images into logits at their own size;
:func:`predict_tiles` streams a manifest's tiles through a DataLoader and yields one ``(tile id, uint8
class map)`` at a time, so memory does not grow with the number of tiles; :func:`predict_image` predicts one
image in memory the same way (the served MLflow model). The contest zip
(:mod:`naic_seg.core.submission`), scene maps and the MLflow model are outputs built on top of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from naic_seg.core.checkpoint import CheckpointError, check_classes
from naic_seg.core.data import ManifestDataset, check_manifest_files, resize_image
from naic_seg.core.engines import ENGINES, Engine, GraphSource, build_engine, torch_engine
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.normalization import checkpoint_normalization
from naic_seg.core.progress import Progress
from naic_seg.core.runtime import Runtime
from naic_seg.core.windows import window_starts, window_stride

log = logging.getLogger(__name__)

TTA_MODES = ("none", "flip", "flip_scale")


@dataclass
class PredictConfig:
    tta: str = "none"  # none (the reference) | flip (h + v flips) | flip_scale (flips x scales)
    tta_scales: Sequence[float] = (0.75, 1.0, 1.25)
    input_size: int | None = None  # None: the checkpoint's training size
    mode: str = "auto"  # resize | slide | auto (slide for tiles larger than slide_above)
    slide_above: int = 1024
    window: int | None = 256  # sliding window in tile pixels (NAIC tiles are 256); None: input_size
    overlap: float = 0.25
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | str = "auto"
    engine: str = "auto"  # auto (measured) | torch | onnxruntime: see naic_seg.core.engines

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {self.tta!r}")
        if self.mode not in ("resize", "slide", "auto"):
            raise ValueError(f"mode must be resize, slide or auto, got {self.mode!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")


def load_models(checkpoints: Sequence[dict], runtime: Runtime) -> list[torch.nn.Module]:
    """Rebuild each checkpoint's model and load its weights strictly; a misfit names the checkpoint."""
    models = []
    for ckpt in checkpoints:
        source = ckpt.get("source", ckpt.get("stage") or "checkpoint")
        config = {k: v for k, v in ckpt["model"].items() if k != "pretrained"}
        try:
            model = build_model(**config, pretrained=None)
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except (RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(f"checkpoint '{source}' does not fit its model {config}: {err}") from err
        models.append(runtime.place_model(model.eval()))
    return models


def tta_views(mode: str, scales: Sequence[float]) -> list[tuple[float, tuple[int, ...]]]:
    """(scale, flip dims) pairs; logits of every view are averaged."""
    flips = [(), (3,), (2,)] if mode in ("flip", "flip_scale") else [()]
    use_scales = list(scales) if mode == "flip_scale" else [1.0]
    return [(s, f) for s in use_scales for f in flips]


def view_sizes(cfg: PredictConfig, size: tuple[int, int]) -> list[tuple[int, int]]:
    """The input sizes the networks see for inputs of ``size`` under ``cfg``'s TTA (a scaled view is
    ``floor(side x scale)``, as ``F.interpolate`` computes it)."""
    scales = sorted({scale for scale, _ in tta_views(cfg.tta, cfg.tta_scales)})
    return [(math.floor(size[0] * s), math.floor(size[1] * s)) for s in scales]


def _resize(x: torch.Tensor, size, antialias: bool = False) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)


class Predictor:
    """Logits averaged over models and TTA views, run by one :class:`~naic_seg.core.engines.Engine`.

    ``models`` are PyTorch networks run under ``runtime`` (the torch engine), unless ``engine`` is given.
    ``input_size`` is the side the models take (tiles and windows are resized to it and their logits back);
    ``tile_size`` the side of the tiles the models were trained on (None when unknown), which is the scale a
    scene should be seen at.
    """

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        cfg: PredictConfig,
        input_size: int | None,
        classes: ClassTable,
        runtime: Runtime | None = None,
        tile_size: int | None = None,
        normalization: dict | None = None,
        engine: Engine | None = None,
    ):
        self.cfg, self.classes = cfg, classes
        if engine is None:
            engine = torch_engine(models, runtime or Runtime.resolve(cfg.device, cfg.amp, cfg.channels_last))
        self.engine, self.runtime = engine, engine.runtime
        self.input_size, self.num_classes, self.tile_size = input_size, classes.num_classes, tile_size
        self.views = tta_views(cfg.tta, cfg.tta_scales)
        self.normalization = normalization
        self.prepare = self.runtime.normalizer(normalization)

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Sequence[dict],
        cfg: PredictConfig,
        classes: ClassTable,
        graphs: GraphSource | None = None,
    ) -> Predictor:
        """Models built and checked now: a misfit or another class table raises here. The engine is chosen
        now too (``cfg.engine``; auto times the candidates on a batch of ``cfg.batch_size`` at the input
        size); ``graphs`` gives ready ONNX graphs (default: exported from the checkpoints, cached)."""
        if not checkpoints:
            raise ValueError("no checkpoint to predict with")
        for ckpt in checkpoints:
            check_classes(ckpt, classes)
        runtime = Runtime.resolve(cfg.device, cfg.amp, cfg.channels_last)
        preprocess = checkpoints[0].get("preprocess", {})
        input_size = cfg.input_size or preprocess.get("input_size")
        normalization = checkpoint_normalization(checkpoints)
        shape = (cfg.batch_size, 3, input_size, input_size) if input_size else None
        engine = build_engine(
            cfg.engine, checkpoints, runtime, shape, lambda: load_models(checkpoints, runtime), graphs
        )
        log.info("Prediction engine: %s; inputs: %s", engine.describe(), engine.runtime.describe())
        tile_size = preprocess.get("tile_size")
        return cls([], cfg, input_size, classes, engine.runtime, tile_size, normalization, engine)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Mean logits of normalised images as given to the models (float32, at the images' resolution)."""
        size = images.shape[-2:]
        total = torch.zeros(images.shape[0], self.num_classes, *size, device=images.device)
        for scale, dims in self.views:
            x = images
            if scale != 1.0:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            if dims:
                x = x.flip(dims)
            for network in self.engine.networks:
                out = network(x)
                if dims:
                    out = out.flip(dims)
                if out.shape[-2:] != size:
                    out = _resize(out, size)
                total += out
        return total / (len(self.views) * len(self.engine.networks))

    def resized_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images of any size: resized to the input size and the logits back. Images are
        shrunk with antialiasing, which matches the PIL bilinear resize the training tiles had to within a
        grey level (without it a 256 -> 128 px resize differs from PIL's by 15 levels on average)."""
        size = images.shape[-2:]
        if self.input_size and tuple(size) != (self.input_size, self.input_size):
            images = _resize(images, (self.input_size, self.input_size), antialias=True)
        out = self.logits(images)
        return _resize(out, size) if out.shape[-2:] != size else out

    @torch.inference_mode()
    def window_logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x h x w windows -> float32 N x C x h x w logits on the CPU (resized to the input
        size for the models and back): what scene mapping calls."""
        return self.resized_logits(self.prepare(images)).cpu()

    def slide(self, image: torch.Tensor, window: int, overlap: float) -> torch.Tensor:
        """Logits of one normalised 1xCxHxW tile from overlapping ``window`` crops (averaged where they
        overlap), each resized to the input size."""
        _, _, h, w = image.shape
        stride = window_stride(window, overlap)
        places = [(y, x) for y in window_starts(h, window, stride) for x in window_starts(w, window, stride)]
        total = torch.zeros(1, self.num_classes, h, w, device=image.device)
        count = torch.zeros(1, 1, h, w, device=image.device)
        step = self.cfg.batch_size
        for i in range(0, len(places), step):
            crops = torch.cat([image[..., y : y + window, x : x + window] for y, x in places[i : i + step]])
            out = self.resized_logits(crops)
            wh = out.shape[-2:]
            for (y, x), logit in zip(places[i : i + step], out, strict=True):
                total[..., y : y + wh[0], x : x + wh[1]] += logit
                count[..., y : y + wh[0], x : x + wh[1]] += 1
        return total / count


def class_map(logits: torch.Tensor, size) -> torch.Tensor:
    """N x C x h x w logits -> N x H x W class indices at ``size`` (bilinear logits, then arg-max)."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = _resize(logits.float(), size)
    return logits.max(1).indices  # max().indices gives argmax's result at a tenth of its CPU cost


def _class_maps(logits: torch.Tensor, sizes: list[list[int]]) -> Iterator[np.ndarray]:
    """uint8 class maps, each resized back to its tile's own size.

    One tile at a time: resizing a whole batch at once made the resident set spike by hundreds of MB
    over a 100,000-tile run (measured with benchmarks/bench_submit.py).
    """
    for logit, size in zip(logits, sizes, strict=True):
        yield class_map(logit[None], size)[0].to(torch.uint8).cpu().numpy()


def predict_manifest(
    manifest: Sequence[dict],
    checkpoints: Sequence[dict],
    cfg: PredictConfig,
    classes: ClassTable,
    progress_every: int = 500,
) -> Iterator[tuple[str, np.ndarray]]:
    """``(tile id, uint8 class map)`` for every manifest entry, in order.

    Models are built and checked now (a misfit raises here); tiles are read and predicted lazily.
    """
    check_manifest_files(manifest)
    predictor = Predictor.from_checkpoints(checkpoints, cfg, classes)
    return predict_tiles(manifest, predictor, progress_every)


def predict_tiles(
    manifest: Sequence[dict], predictor: Predictor, progress_every: int = 500
) -> Iterator[tuple[str, np.ndarray]]:
    """Stream a manifest's tiles through ``predictor``: resized to its input size and batched, or, in
    slide mode (and in auto mode for tiles with a side above ``slide_above``), whole and window by window."""
    cfg = predictor.cfg
    slide = cfg.mode == "slide"
    dataset = ManifestDataset(
        manifest,
        predictor.classes,
        None if slide else predictor.input_size,
        label_size=None,
        keep_above=cfg.slide_above if cfg.mode == "auto" else None,
    )
    loader = predictor.runtime.loader(dataset, cfg.batch_size, cfg.workers)
    progress = Progress(log, len(manifest), every_n=progress_every, label="predicted", unit="tiles")
    for batch in loader:
        sizes = batch["orig_size"].tolist()
        images = batch["image"]
        groups = [images] if isinstance(images, torch.Tensor) else [image[None] for image in images]
        position = 0
        for group in groups:
            logits = _group_logits(predictor, predictor.prepare(group), slide)
            for pred in _class_maps(logits, sizes[position : position + len(logits)]):
                yield Path(manifest[int(batch["index"][position])]["filename"]).stem, pred
                position += 1
        progress.add(len(sizes))


def predict_image(predictor: Predictor, image: np.ndarray) -> np.ndarray:
    """One uint8 H x W x 3 image -> its uint8 class map at its own size, exactly as :func:`predict_tiles`
    predicts a tile of that image (the same resize, or the same windows above ``slide_above``): what the
    served MLflow model calls for each image it is sent."""
    cfg = predictor.cfg
    # ManifestDataset's rule: a tile is kept whole in slide mode, and in auto mode above slide_above
    whole = cfg.mode == "slide" or (cfg.mode == "auto" and max(image.shape[:2]) > cfg.slide_above)
    pixels = image if whole else resize_image(image, predictor.input_size)
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
    logits = _group_logits(predictor, predictor.prepare(x), cfg.mode == "slide")
    return next(_class_maps(logits, [list(image.shape[:2])]))


def _group_logits(predictor: Predictor, x: torch.Tensor, slide: bool) -> torch.Tensor:
    cfg = predictor.cfg
    if slide or max(x.shape[-2:]) > cfg.slide_above:
        window = cfg.window or predictor.input_size
        return torch.cat([predictor.slide(x[j : j + 1], window, cfg.overlap) for j in range(len(x))])
    if predictor.input_size and tuple(x.shape[-2:]) != (predictor.input_size,) * 2:
        x = _resize(x, (predictor.input_size, predictor.input_size))
    return predictor.logits(x)
