"""The training engine: the reference's iteration-based SGD recipe, resumable, optionally distributed.

``train`` runs in one process (or one rank of a process group); ``launch`` starts ``nproc`` ranks with
torchrun's launcher (``torch.distributed.launcher.api.elastic_launch``) and returns rank 0's result.
Metrics reach the caller through ``log_fn(metrics, step)``: this module knows nothing of MLflow.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from naic_seg.core.atomic import atomic_path
from naic_seg.core.checkpoint import CheckpointError
from naic_seg.core.data import InfiniteSampler, ManifestDataset, Normalizer, collate, read_image
from naic_seg.core.labels import IGNORE_INDEX, ClassTable
from naic_seg.core.metrics import confusion_matrix, scores
from naic_seg.core.models import build_model, convert_sync_batchnorm

log = logging.getLogger(__name__)

LogFn = Callable[[dict[str, float], int], None]
RESUME_FILE = "resume.pt"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good resume checkpoint is left as it was."""


@dataclass
class TrainConfig:
    """One stage's recipe. Defaults are the reference's; ``auto`` switches mean on for CUDA, off on CPU."""

    iterations: int
    batch_size: int = 4  # per device; the reference ran 4 GPUs x 4 images
    lr: float = 0.01
    min_lr: float = 1e-4
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aux_weight: float = 0.4
    input_size: int | None = 512
    augment: dict = field(default_factory=dict)
    workers: int = 2
    eval_interval: int = 8000
    eval_batch_size: int | None = None
    log_interval: int = 50
    checkpoint_interval: int = 1000
    seed: int = 1996
    device: str = "auto"
    amp: str = "auto"  # auto | none | bf16 | fp16
    channels_last: bool | str = "auto"
    cudnn_benchmark: bool | str = "auto"
    compile: bool = False
    work_dir: str | None = None
    resume: bool = True
    grid_tiles: int = 8

    @classmethod
    def from_params(cls, params: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"unknown training parameter(s) {unknown}; valid: {sorted(names)}")
        cfg = cls(**params)
        if cfg.amp not in ("auto", "none", "bf16", "fp16"):
            raise ValueError(f"amp must be one of auto, none, bf16, fp16; got {cfg.amp!r}")
        if cfg.iterations < 1 or cfg.batch_size < 1:
            raise ValueError("iterations and batch_size must be positive")
        return cfg


def poly_lr(iteration: int, max_iterations: int, base_lr: float, min_lr: float, power: float = 0.9) -> float:
    """mmsegmentation's poly schedule: ``(base - min) * (1 - it / max) ** power + min``."""
    return (base_lr - min_lr) * (1 - iteration / max_iterations) ** power + min_lr


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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _switch(value: bool | str, cuda: bool) -> bool:
    return cuda if value == "auto" else bool(value)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _fingerprint(model_config: dict, cfg: TrainConfig, n_train: int, world_size: int) -> dict:
    """What must match for a resume to continue the same run."""
    keys = (
        "iterations",
        "batch_size",
        "lr",
        "min_lr",
        "power",
        "momentum",
        "weight_decay",
        "aux_weight",
        "input_size",
        "augment",
        "seed",
    )
    fields = {k: getattr(cfg, k) for k in keys}
    return {"model": dict(model_config), **fields, "n_train": n_train, "world_size": world_size}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Progress:
    """A tqdm bar on a terminal; a log line every ``log_interval`` iterations otherwise."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True)
        self.enabled = enabled

    def update(self, iteration: int, total: int, stats: dict, eta_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = iteration
            self.bar.set_postfix(
                loss=f"{stats['loss']:.4f}",
                lr=f"{stats['lr']:.2e}",
                img_s=f"{stats['images_per_s']:.1f}",
                refresh=False,
            )
            self.bar.refresh()
        else:
            log.info(
                "iter %d/%d loss %.4f aux %.4f lr %.3e %.1f img/s ETA %s",
                iteration,
                total,
                stats["loss"],
                stats["aux_loss"],
                stats["lr"],
                stats["images_per_s"],
                time.strftime("%H:%M:%S", time.gmtime(eta_s)),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _loader(dataset, batch_size: int, workers: int, sampler=None, seed: int = 0, cuda: bool = False):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=cuda,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        # Worker seeds come from this generator, not the global RNG, so resuming draws the same numbers.
        generator=torch.Generator().manual_seed(seed),
    )


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    manifest: Sequence[dict],
    classes: ClassTable,
    cfg: TrainConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[np.ndarray, list[dict]]:
    """Confusion matrix over ``manifest`` at each tile's original size, plus the first tiles for a grid."""
    normalize = Normalizer().to(device)
    shard = list(manifest[rank::world_size])
    dataset = ManifestDataset(shard, classes, cfg.input_size, label_size="original")
    loader = _loader(
        dataset, cfg.eval_batch_size or cfg.batch_size, cfg.workers, seed=cfg.seed, cuda=device.type == "cuda"
    )
    n = classes.num_classes
    cm = torch.zeros(n, n, dtype=torch.int64, device=device)
    amp_dtype = _amp_dtype(cfg.amp, device)
    channels_last = _switch(cfg.channels_last, device.type == "cuda")
    grid = []
    was_training = model.training
    model.eval()
    for batch in loader:
        images = normalize(batch["image"].to(device, non_blocking=True))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        labels = batch["label"]
        # One chunk for a batch of equal-sized labels; one per tile when the original sizes differ.
        if isinstance(labels, torch.Tensor):
            chunks = [(logits, labels)]
        else:
            chunks = [(logits[i : i + 1], lab[None]) for i, lab in enumerate(labels)]
        for chunk, lab in chunks:
            lab = lab.to(device, non_blocking=True)
            pred = F.interpolate(chunk.float(), size=lab.shape[-2:], mode="bilinear", align_corners=False)
            pred = pred.max(1).indices  # the same as argmax, and ~10x faster on CPU
            cm += confusion_matrix(pred, lab, n)
            # The loader keeps manifest order, so the first tiles seen are shard[0], shard[1], ...
            for k in range(min(len(lab), max(0, cfg.grid_tiles - len(grid))) if rank == 0 else 0):
                entry = shard[len(grid)]
                grid.append(
                    {
                        "id": Path(entry["filename"]).stem,
                        "image": read_image(entry["filename"]),
                        "label": lab[k].cpu().numpy().astype(np.uint8),
                        "pred": pred[k].cpu().numpy().astype(np.uint8),
                    }
                )
    if world_size > 1:
        dist.all_reduce(cm)
    model.train(was_training)
    return cm.cpu().numpy(), grid


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
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    cuda = device.type == "cuda"
    main = rank == 0
    torch.backends.cudnn.benchmark = _switch(cfg.cudnn_benchmark, cuda)
    amp_dtype = _amp_dtype(cfg.amp, device)
    channels_last = _switch(cfg.channels_last, cuda)

    torch.manual_seed(cfg.seed)
    model = build_model(**model_config)
    if init_state is not None:
        try:
            model.load_state_dict(init_state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"the initial checkpoint does not fit model {model_config}: {err}") from err
    if world_size > 1 and cuda:
        # SyncBatchNorm runs on GPUs only; on CPU (gloo) each rank normalises over its own batch.
        model = convert_sync_batchnorm(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start, history, best = 0, [], {"iteration": None, "mIoU": -1.0}
    fingerprint = _fingerprint(model_config, cfg, len(train_manifest), world_size)
    resume_path = Path(cfg.work_dir) / RESUME_FILE if cfg.work_dir else None
    if resume_path is not None and resume_path.exists():
        if cfg.resume:
            state = _load_resume(resume_path, fingerprint)
            model.load_state_dict(state["model"], strict=True)
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"])
            start, history, best = state["iteration"], state["history"], state["best"]
            if main:
                log.info(
                    "Resuming from iteration %d of %d (checkpoint %s)", start, cfg.iterations, resume_path
                )
        elif main:
            log.info("resume is off: starting afresh and replacing %s", resume_path)

    ddp_model = model
    if world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None
        )
    run_model = torch.compile(ddp_model) if cfg.compile else ddp_model
    normalize = Normalizer().to(device)

    dataset = ManifestDataset(
        train_manifest, classes, cfg.input_size, label_size="input", augment=cfg.augment, seed=cfg.seed
    )
    sampler = InfiniteSampler(
        len(dataset), cfg.seed, start=start * cfg.batch_size * world_size, rank=rank, world_size=world_size
    )
    batches = iter(_loader(dataset, cfg.batch_size, cfg.workers, sampler, cfg.seed + start, cuda))

    def save_resume(iteration: int) -> None:
        if main and resume_path is not None:
            state = {
                "fingerprint": fingerprint,
                "iteration": iteration,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "history": history,
                "best": best,
            }
            with atomic_path(resume_path) as tmp:
                torch.save(state, tmp)

    def run_eval(iteration: int) -> tuple[dict, np.ndarray, list]:
        cm, grid = evaluate(run_model, val_manifest, classes, cfg, device, rank, world_size)
        result = scores(cm, classes.names)
        record = {"iteration": iteration, **{k: result[k] for k in ("mIoU", "FWIoU", "pixel_accuracy")}}
        history.append(record)
        if result["mIoU"] > best["mIoU"]:
            best.update(iteration=iteration, mIoU=result["mIoU"])
        if main:
            log.info(
                "eval @%d: mIoU %.4f FWIoU %.4f acc %.4f",
                iteration,
                result["mIoU"],
                result["FWIoU"],
                result["pixel_accuracy"],
            )
            if log_fn:
                metrics = {f"val_{k}": record[k] for k in ("mIoU", "FWIoU", "pixel_accuracy")}
                metrics.update(
                    {f"val_IoU.{name}": v for name, v in result["per_class_IoU"].items() if v is not None}
                )
                log_fn(metrics, iteration)
        return result, cm, grid

    model.train()
    progress = _Progress(cfg.iterations, start, enabled=main)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    sums = torch.zeros(2, device=device)
    window_start, window_iters, train_seconds = time.perf_counter(), 0, 0.0
    windows: list[tuple[int, float]] = []  # (images, seconds) of each log window
    last_eval = None
    it = start
    try:
        for it in range(start, cfg.iterations):
            lr = poly_lr(it, cfg.iterations, cfg.lr, cfg.min_lr, cfg.power)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches)
            images = normalize(batch["image"].to(device, non_blocking=True))
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits, aux_logits = run_model(images)
                loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
                aux_loss = (
                    F.cross_entropy(aux_logits.float(), labels, ignore_index=IGNORE_INDEX)
                    if aux_logits is not None
                    else torch.zeros((), device=device)
                )
                total = loss + cfg.aux_weight * aux_loss
            nonfinite |= ~torch.isfinite(total.detach())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            sums += torch.stack([loss.detach(), aux_loss.detach()])
            window_iters += 1
            done = it + 1

            at_log = done % cfg.log_interval == 0 or done == cfg.iterations
            at_ckpt = done % cfg.checkpoint_interval == 0 or done == cfg.iterations
            at_eval = done % cfg.eval_interval == 0 or done == cfg.iterations
            # Checked (one device sync) only where something is logged or saved, never before a save.
            if (at_log or at_ckpt or at_eval) and bool(nonfinite.item()):
                raise NonFiniteLossError(
                    f"the loss became NaN or infinite before iteration {done} (lr {lr:.3e}); training "
                    f"stopped. The last good resume checkpoint ({resume_path or 'none: no work_dir'}) "
                    "is untouched: lower the learning rate or check the data, then run again."
                )
            if at_log:
                elapsed = time.perf_counter() - window_start
                train_seconds += elapsed
                images_done = window_iters * cfg.batch_size * world_size
                windows.append((images_done, elapsed))
                mean = (sums / window_iters).tolist()
                stats = {
                    "loss": mean[0],
                    "aux_loss": mean[1],
                    "lr": lr,
                    "images_per_s": images_done / elapsed,
                }
                eta = (cfg.iterations - done) * elapsed / window_iters
                progress.update(done, cfg.iterations, stats, eta)
                if main and log_fn:
                    log_fn(stats, done)
                sums.zero_()
                window_iters = 0
            if at_eval:
                last_eval = run_eval(done)
            if at_ckpt:
                save_resume(done)
            if at_log or at_eval or at_ckpt:
                window_start = time.perf_counter()
    finally:
        progress.close()
    final_iteration = max(it + 1, start) if start < cfg.iterations else start
    if last_eval is None:  # a resumed run that had nothing left to train
        last_eval = run_eval(final_iteration)
    result, cm, grid = last_eval
    return TrainResult(
        state_dict={k: v.detach().cpu() for k, v in _unwrap(run_model).state_dict().items()},
        model_config=dict(model_config),
        iteration=final_iteration,
        metrics=result,
        best=best,
        history=history,
        confusion=cm,
        grid=grid,
        train_seconds=train_seconds,
        images_per_s=_steady_rate(windows),
        resumed_from=start,
    )


def _steady_rate(windows: list[tuple[int, float]]) -> float:
    """Training images/s, leaving out the first log window (worker start-up, first decodes) when there
    are others: the figure a long run settles at."""
    steady = windows[1:] or windows
    seconds = sum(t for _, t in steady)
    return sum(n for n, _ in steady) / seconds if seconds else 0.0


def _load_resume(path: Path, fingerprint: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read resume checkpoint '{path}': {type(err).__name__}: {err}") from err
    saved = state.get("fingerprint", {})
    differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if differ:
        raise CheckpointError(
            f"resume checkpoint '{path}' belongs to a run with other settings ({', '.join(differ)} differ); "
            "set the stage's resume parameter to false to start afresh, or remove the file"
        )
    return state


def _distributed_worker(model_config, cfg, train_manifest, val_manifest, class_config, init_state, log_fn):
    cuda = resolve_device(cfg.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        if rank != 0:
            logging.getLogger("naic_seg").setLevel(logging.WARNING)
        classes = ClassTable.from_config(class_config)
        result = train(
            model_config,
            cfg,
            train_manifest,
            val_manifest,
            classes,
            init_state,
            log_fn if rank == 0 else None,
            rank,
            world,
        )
        return result if rank == 0 else None
    finally:
        dist.destroy_process_group()


def launch(
    nproc: int,
    model_config: dict,
    cfg: TrainConfig,
    train_manifest: Sequence[dict],
    val_manifest: Sequence[dict],
    classes: ClassTable,
    init_state: dict | None = None,
    log_fn: LogFn | None = None,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    run_id: str | None = None,
) -> TrainResult | None:
    """Train data-parallel on ``nproc`` processes per machine with torchrun's launcher.

    One machine: ``nnodes=1`` and a free local port is picked. Several machines: the same call on each,
    with ``nnodes`` and a shared ``rdzv_endpoint`` (host:port of the first machine) and ``run_id``;
    only the machine holding global rank 0 gets the result (the others get None).
    """
    if nproc * nnodes <= 1:
        return train(model_config, cfg, train_manifest, val_manifest, classes, init_state, log_fn)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=run_id or f"naic-seg-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint or "localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    results: dict[int, Any] = elastic_launch(config, _distributed_worker)(
        model_config, cfg, list(train_manifest), list(val_manifest), classes.as_config(), init_state, log_fn
    )
    return results.get(0)
