"""The training engine: the reference's iteration-based SGD recipe, resumable, optionally distributed.

``train`` runs one stage in one process (or one rank of a process group); :mod:`.launch` starts several.
Metrics reach the caller through ``log_fn(metrics, step)``: this module knows nothing of MLflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from naic_seg.core.checkpoint import CheckpointError
from naic_seg.core.data import InfiniteSampler, ManifestDataset
from naic_seg.core.labels import ClassTable
from naic_seg.core.metrics import scores
from naic_seg.core.models import build_model, convert_sync_batchnorm
from naic_seg.core.normalization import input_normalization
from naic_seg.core.runtime import Runtime
from naic_seg.core.training.average import WeightAverage
from naic_seg.core.training.config import TrainConfig
from naic_seg.core.training.evaluation import evaluate
from naic_seg.core.training.loss import SegmentationLoss, resolve_class_weight
from naic_seg.core.training.progress import LogWindow, show_window, training_progress
from naic_seg.core.training.resume import ResumeFile

log = logging.getLogger(__name__)

LogFn = Callable[[dict[str, float], int], None]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good resume checkpoint is left as it was."""


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    model_config: dict
    iteration: int
    metrics: dict  # the final evaluation's scores
    best: dict  # {"iteration": ..., "mIoU": ...}: the best hold-out evaluation seen
    history: list[dict]  # every evaluation: {"iteration", "mIoU", "FWIoU", "pixel_accuracy"}
    confusion: np.ndarray
    grid: list[dict]  # a few validation tiles: {"id", "image", "label", "pred"} at the original size
    train_seconds: float  # the training loop alone, evaluations and checkpoints excluded
    images_per_s: float  # steady state: the first log window (start-up) left out
    resumed_from: int


class Stage:
    """The model, optimiser and grad scaler of one stage, and its training step."""

    def __init__(
        self,
        model_config: dict,
        cfg: TrainConfig,
        runtime: Runtime,
        init_state,
        world_size: int,
        class_weight: torch.Tensor | None = None,
    ):
        self.cfg, self.runtime = cfg, runtime
        torch.manual_seed(cfg.seed)
        model = build_model(**model_config)
        if init_state is not None:
            try:
                model.load_state_dict(init_state, strict=True)
            except RuntimeError as err:
                raise CheckpointError(
                    f"the initial checkpoint does not fit model {model_config}: {err}"
                ) from err
        if world_size > 1 and runtime.cuda:
            # SyncBatchNorm runs on GPUs only; on CPU (gloo) each rank normalises over its own batch.
            model = convert_sync_batchnorm(model)
        self.model = runtime.place_model(model)
        self.average = WeightAverage(self.model, cfg.ema["decay"]) if cfg.ema else None
        self.optimizer = torch.optim.SGD(
            _param_groups(model, cfg.encoder_lr_mult),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        self.loss = SegmentationLoss(class_weight, cfg.ohem_thresh, cfg.ohem_min_kept).to(runtime.device)
        self.scaler = runtime.grad_scaler()
        self.run_model: torch.nn.Module = model
        self.normalization = input_normalization(model_config["encoder"])
        self.prepare = runtime.normalizer(self.normalization)

    def wrap(self, world_size: int) -> None:
        """DistributedDataParallel and torch.compile, after any resume state is loaded."""
        if world_size > 1:
            device_ids = [self.runtime.device.index] if self.runtime.cuda else None
            self.run_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if self.cfg.compile:
            self.run_model = torch.compile(self.run_model)

    def state(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.average is not None:
            state["ema"] = self.average.model.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:
            self.average.model.load_state_dict(state["ema"], strict=True)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated and saved: the weight average when ``ema`` is set, else the trained model."""
        return self.run_model if self.average is None else self.average.model

    def update_average(self, iteration: int) -> None:
        if self.average is not None:
            self.average.update(self.model, iteration)

    def step(self, batch: dict, lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One SGD step on loss + aux_weight x auxiliary loss; returns (loss, aux loss, total), detached."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        images = self.prepare(batch["image"])
        labels = batch["label"].to(self.runtime.device, non_blocking=True)
        with self.runtime.autocast():
            logits, aux_logits = self.run_model(images)
            loss = self.loss(logits, labels)
            aux_loss = (
                self.loss(aux_logits, labels)
                if aux_logits is not None
                else torch.zeros((), device=self.runtime.device)
            )
            total = loss + self.cfg.aux_weight * aux_loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), aux_loss.detach(), total.detach()

    def final_state_dict(self) -> dict[str, torch.Tensor]:
        model = self.model if self.average is None else self.average.model
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _param_groups(model: torch.nn.Module, encoder_lr_mult: float) -> list[dict]:
    """The head (and auxiliary head) at the stage's rate, the encoder at ``encoder_lr_mult`` times it."""
    encoder = list(model.encoder.parameters())
    ids = {id(p) for p in encoder}
    head = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": head, "lr_mult": 1.0}, {"params": encoder, "lr_mult": float(encoder_lr_mult)}]


class _Evaluations:
    """Hold-out evaluations: the history, the best one, and their report to the log and ``log_fn``."""

    def __init__(self, stage: Stage, val_manifest, classes: ClassTable, log_fn, rank: int, world_size: int):
        self.stage, self.val_manifest, self.classes = stage, val_manifest, classes
        self.log_fn, self.rank, self.world_size = log_fn, rank, world_size
        self.history: list[dict] = []
        self.best = {"iteration": None, "mIoU": -1.0}
        self.last: tuple[dict, np.ndarray, list] | None = None

    def run(self, iteration: int) -> None:
        cfg = self.stage.cfg
        cm, grid = evaluate(
            self.stage.eval_model,
            self.val_manifest,
            self.classes,
            cfg.input_size,
            cfg.eval_batch_size or cfg.batch_size,
            cfg.workers,
            self.stage.runtime,
            self.stage.normalization,
            cfg.grid_tiles,
            self.rank,
            self.world_size,
        )
        result = scores(cm, self.classes.names)
        record = {"iteration": iteration, **{k: result[k] for k in ("mIoU", "FWIoU", "pixel_accuracy")}}
        self.history.append(record)
        if result["mIoU"] > self.best["mIoU"]:
            self.best.update(iteration=iteration, mIoU=result["mIoU"])
        self.last = (result, cm, grid)
        if self.rank == 0:
            self._report(iteration, result, record)

    def _report(self, iteration: int, result: dict, record: dict) -> None:
        log.info(
            "eval @%d: mIoU %.4f FWIoU %.4f acc %.4f",
            iteration,
            result["mIoU"],
            result["FWIoU"],
            result["pixel_accuracy"],
        )
        if self.log_fn:
            metrics = {f"val_{k}": record[k] for k in ("mIoU", "FWIoU", "pixel_accuracy")}
            metrics.update({f"val_IoU.{c}": v for c, v in result["per_class_IoU"].items() if v is not None})
            self.log_fn(metrics, iteration)


def _batches(manifest, classes: ClassTable, cfg: TrainConfig, runtime: Runtime, start: int, rank, world):
    """The endless, seeded, resumable stream of training batches from iteration ``start`` on; nothing (no
    loader, no worker processes) when there is nothing left to train."""
    if cfg.iterations <= start:
        return iter(())
    dataset = ManifestDataset(
        manifest, classes, cfg.input_size, label_size="input", augment=cfg.augment, seed=cfg.seed
    )
    sampler = InfiniteSampler(
        len(dataset), cfg.seed, start=start * cfg.batch_size * world, rank=rank, world_size=world
    )
    return iter(runtime.loader(dataset, cfg.batch_size, cfg.workers, sampler, cfg.seed + start))


def train(
    model_config: dict,
    cfg: TrainConfig,
    train_manifest: Sequence[dict],
    val_manifest: Sequence[dict],
    classes: ClassTable,
    init_state: dict[str, torch.Tensor] | None = None,
    log_fn: LogFn | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> TrainResult:
    """Train one stage. ``init_state`` (a full model state dict, e.g. stage 1's) is loaded strictly."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if world_size > 1 else None
    runtime = Runtime.resolve(cfg.device, cfg.amp, cfg.channels_last, cfg.cudnn_benchmark, local_rank)
    main = rank == 0
    if main:
        log.info("Training runtime: %s", runtime.describe())
    class_weight = resolve_class_weight(cfg.class_weight, train_manifest, classes)
    stage = Stage(model_config, cfg, runtime, init_state, world_size, class_weight)
    resume = ResumeFile(cfg.work_dir, cfg.fingerprint(model_config, len(train_manifest), world_size))
    evals = _Evaluations(stage, val_manifest, classes, log_fn if main else None, rank, world_size)
    start, evals.history, evals.best = resume.restore(stage, cfg.resume, announce=main)
    if cfg.iterations == 0 and main:
        log.info("iterations: 0, so no training: the starting model is scored on the hold-out and passed on")
    stage.wrap(world_size)
    batches = _batches(train_manifest, classes, cfg, runtime, start, rank, world_size)
    window = LogWindow(runtime.device, cfg.batch_size * world_size)
    progress = training_progress(cfg.iterations, start, enabled=main)
    nonfinite = torch.zeros((), dtype=torch.bool, device=runtime.device)
    stage.model.train()
    try:
        for done in range(start + 1, cfg.iterations + 1):
            lr = cfg.lr_at(done - 1)
            loss, aux_loss, total = stage.step(next(batches), lr)
            stage.update_average(done)
            nonfinite |= ~torch.isfinite(total)
            window.add(loss, aux_loss)
            at_log, at_eval, at_ckpt = cfg.due(done)
            if at_log or at_eval or at_ckpt:
                _check_finite(nonfinite, done, lr, resume)
            if at_log:
                stats, eta = window.close(lr, cfg.iterations - done)
                show_window(progress, done, stats, eta)
                if main and log_fn:
                    log_fn(stats, done)
            if at_eval or at_ckpt:
                window.pause()
                if at_eval:
                    evals.run(done)
                if at_ckpt and main:
                    resume.save(stage, done, evals.history, evals.best)
                window.resume()
    finally:
        progress.close()
    if evals.last is None:  # a resumed run that had nothing left to train
        evals.run(max(start, cfg.iterations))
    return _result(stage, model_config, evals, window, start)


def _check_finite(nonfinite: torch.Tensor, done: int, lr: float, resume: ResumeFile) -> None:
    """One device sync, only where something is logged or saved, and never before a save."""
    if bool(nonfinite.item()):
        raise NonFiniteLossError(
            f"the loss became NaN or infinite before iteration {done} (lr {lr:.3e}); training "
            f"stopped. The last good resume checkpoint ({resume.path or 'none: no work_dir'}) "
            "is untouched: lower the learning rate or check the data, then run again."
        )


def _result(stage: Stage, model_config: dict, evals: _Evaluations, window: LogWindow, start: int):
    result, cm, grid = evals.last
    return TrainResult(
        state_dict=stage.final_state_dict(),
        model_config=dict(model_config),
        iteration=max(start, stage.cfg.iterations),
        metrics=result,
        best=evals.best,
        history=evals.history,
        confusion=cm,
        grid=grid,
        train_seconds=window.train_seconds,
        images_per_s=window.steady_rate,
        resumed_from=start,
    )
