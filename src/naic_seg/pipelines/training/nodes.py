"""Nodes of one training stage: they translate between the catalog and naic_seg.core.training."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from naic_seg.core.atomic import check_writable
from naic_seg.core.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from naic_seg.core.data import check_manifest_files
from naic_seg.core.figures import confusion_figure, prediction_grid
from naic_seg.core.labels import ClassTable
from naic_seg.core.training import RESUME_FILE, TrainConfig, launch
from naic_seg.datasets.checkpoint import CheckpointFile
from naic_seg.tracking import active_run_logger, log_artifact_file, log_params

log = logging.getLogger(__name__)


def _devices(nproc: int | str) -> int:
    if nproc == "auto":
        return max(1, torch.cuda.device_count())
    return int(nproc)


def resolve_model_config(model_params: dict, init_checkpoint: dict | None) -> dict:
    """Stage 1 takes its model from parameters; a later stage takes arch, encoder and classes from the
    checkpoint it starts from and overrides only what its parameters set (the output stride)."""
    if init_checkpoint is None:
        return dict(model_params)
    config = dict(init_checkpoint["model"])
    config.update({k: v for k, v in model_params.items() if k != "pretrained"})
    config["pretrained"] = None  # the checkpoint brings every weight
    return config


def train_stage(
    train_manifest: list[dict],
    val_manifest: list[dict],
    init_checkpoint: CheckpointFile | dict | str | None,
    classes: list[dict],
    name: str,
    model: dict,
    train: dict,
    distributed: dict,
) -> tuple[dict, dict, list[dict]]:
    """Train one stage; returns its checkpoint, its metrics and a few validation tiles for the grid."""
    if isinstance(init_checkpoint, str):
        init_checkpoint = load_checkpoint(init_checkpoint)
    elif isinstance(init_checkpoint, CheckpointFile):
        init_checkpoint = init_checkpoint.load()
    table = ClassTable.from_config(classes)
    model_config = resolve_model_config(model, init_checkpoint)
    if model_config.setdefault("num_classes", table.num_classes) != table.num_classes:
        raise ValueError(
            f"model num_classes {model_config['num_classes']} differs from the "
            f"{table.num_classes} classes in parameters"
        )
    if init_checkpoint is not None and init_checkpoint.get("classes") not in (None, table.as_config()):
        raise ValueError(
            "the checkpoint to start from was trained on another class table: "
            f"{init_checkpoint.get('classes')}"
        )
    config = TrainConfig.from_params(train)
    if not train_manifest or not val_manifest:
        raise ValueError("training needs a non-empty train and val manifest: run data_prep first")
    check_manifest_files(train_manifest + val_manifest)
    if config.work_dir:
        check_writable(Path(config.work_dir) / RESUME_FILE)
    log_params({f"{name}.resolved_model.{k}": v for k, v in model_config.items()})
    result = launch(
        _devices(distributed.get("nproc", 1)),
        model_config,
        config,
        train_manifest,
        val_manifest,
        table,
        init_state=None if init_checkpoint is None else init_checkpoint["state_dict"],
        log_fn=active_run_logger(name),
        nnodes=int(distributed.get("nnodes", 1)),
        rdzv_endpoint=distributed.get("rdzv_endpoint"),
        run_id=distributed.get("run_id"),
    )
    if result is None:
        raise RuntimeError(
            f"{name}: this machine held no rank-0 worker; the machine with node rank 0 writes the checkpoint"
        )
    summary = {k: result.metrics[k] for k in ("mIoU", "FWIoU", "pixel_accuracy")}
    metrics = {
        "stage": name,
        "iteration": result.iteration,
        "final": result.metrics,
        "best": result.best,
        "history": result.history,
        "confusion_matrix": result.confusion.tolist(),
        "train_seconds": result.train_seconds,
        "images_per_s": result.images_per_s,
        "resumed_from": result.resumed_from,
    }
    logger = active_run_logger(name)
    if logger:
        logger(
            {f"final_{k}": v for k, v in summary.items()}
            | {
                "best_val_mIoU": result.best["mIoU"],
                "train_seconds": result.train_seconds,
                "train_images_per_s": result.images_per_s,
            },
            result.iteration,
        )
    model_config.pop("pretrained", None)
    checkpoint = make_checkpoint(
        model_config,
        result.state_dict,
        result.iteration,
        summary,
        table.as_config(),
        stage=name,
        preprocess={"input_size": config.input_size},
    )
    return checkpoint, metrics, result.grid


def plot_confusion(metrics: dict, classes: list[dict]):
    names = ClassTable.from_config(classes).names
    return confusion_figure(
        metrics["confusion_matrix"],
        names,
        f"{metrics['stage']} @ {metrics['iteration']}: mIoU {metrics['final']['mIoU']:.4f}",
    )


def plot_validation_grid(tiles: list[dict], classes: list[dict]):
    return prediction_grid(tiles, ClassTable.from_config(classes).names)


def log_checkpoint(checkpoint: dict, enabled: bool) -> None:
    """Copy the stage's checkpoint into the MLflow run as an artifact when the switch is on."""
    if not enabled:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{checkpoint.get('stage') or 'model'}.pt"
        save_checkpoint(checkpoint, path)
        log_artifact_file(os.fspath(path), "checkpoints")
