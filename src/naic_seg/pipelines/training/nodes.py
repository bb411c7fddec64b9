"""Nodes of one training stage: they translate between the catalog and naic_seg.core.training."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from naic_seg.core.checkpoint import open_checkpoint, save_checkpoint
from naic_seg.core.figures import confusion_figure, prediction_grid
from naic_seg.core.labels import ClassTable
from naic_seg.core.training import (
    check_stage_inputs,
    devices,
    launch,
    resolve_model_config,
    stage_checkpoint,
    stage_report,
    stage_scores,
)
from naic_seg.pipelines.training.options import stage_options
from naic_seg.tracking import active_run_id, active_run_logger, log_artifact_file, log_params


def train_stage(
    train_manifest: list[dict],
    val_manifest: list[dict],
    init_checkpoint,  # a CheckpointFile (stage 2), a checkpoint path or null (stage 1): open_checkpoint
    classes: list[dict],
    options: dict,
    stage: int,
) -> tuple[dict, dict, list[dict], dict]:
    """Train one stage; returns its checkpoint, its report, a few validation tiles and its final scores."""
    opts = stage_options(options, stage)
    name, config, distributed = opts.name, opts.train, opts.distributed
    table = ClassTable.from_config(classes)
    init = open_checkpoint(init_checkpoint)
    model_config = resolve_model_config(opts.model_params(), init, table)
    check_stage_inputs(train_manifest, val_manifest, config)
    log_params({f"{name}.resolved_model.{k}": v for k, v in model_config.items()})
    result = launch(
        devices(distributed.nproc),
        model_config,
        config,
        train_manifest,
        val_manifest,
        table,
        init_state=None if init is None else init["state_dict"],
        log_fn=active_run_logger(name),
        nnodes=distributed.nnodes,
        rdzv_endpoint=distributed.rdzv_endpoint,
        run_id=distributed.run_id,
    )
    if result is None:
        raise RuntimeError(f"{name}: this machine held no rank-0 worker; node rank 0 writes the checkpoint")
    checkpoint = stage_checkpoint(result, name, table, config, train_manifest)
    checkpoint["mlflow_run_id"] = active_run_id()  # links maps made with it to this run and its model
    return checkpoint, stage_report(result, name), result.grid, stage_scores(result)


def plot_confusion(metrics: dict, classes: list[dict]):
    names = ClassTable.from_config(classes).names
    return confusion_figure(
        metrics["confusion_matrix"],
        names,
        f"{metrics['stage']} @ {metrics['iteration']}: mIoU {metrics['final']['mIoU']:.4f}",
    )


def plot_validation_grid(tiles: list[dict], classes: list[dict]):
    return prediction_grid(tiles, ClassTable.from_config(classes).names)


def log_checkpoint(checkpoint: dict, options: dict, stage: int) -> None:
    """Copy the stage's checkpoint into the MLflow run as an artifact when ``log_checkpoint`` is on."""
    if not stage_options(options, stage).log_checkpoint:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{checkpoint.get('stage') or 'model'}.pt"
        save_checkpoint(checkpoint, path)
        log_artifact_file(os.fspath(path), "checkpoints")
