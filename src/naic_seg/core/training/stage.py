"""What one training stage needs before and after the engine: its model, its checks, its outputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from naic_seg.core.atomic import check_writable
from naic_seg.core.checkpoint import check_classes, make_checkpoint
from naic_seg.core.data import check_manifest_files, typical_tile_size
from naic_seg.core.labels import ClassTable
from naic_seg.core.normalization import input_normalization
from naic_seg.core.training.config import TrainConfig
from naic_seg.core.training.engine import TrainResult
from naic_seg.core.training.resume import RESUME_FILE

SUMMARY_KEYS = ("mIoU", "FWIoU", "pixel_accuracy")


def resolve_model_config(model_params: dict, init_checkpoint: dict | None, classes: ClassTable) -> dict:
    """Stage 1 takes its model from parameters; a later stage takes arch, encoder and classes from the
    checkpoint it starts from and overrides only what its parameters set (the output stride)."""
    if init_checkpoint is None:
        config = dict(model_params)
    else:
        check_classes(init_checkpoint, classes)
        config = dict(init_checkpoint["model"])
        config.update({k: v for k, v in model_params.items() if k != "pretrained"})
        config["pretrained"] = None  # the checkpoint brings every weight
    if config.setdefault("num_classes", classes.num_classes) != classes.num_classes:
        raise ValueError(
            f"model num_classes {config['num_classes']} differs from the "
            f"{classes.num_classes} classes in parameters"
        )
    return config


def check_stage_inputs(
    train_manifest: Sequence[dict], val_manifest: Sequence[dict], cfg: TrainConfig
) -> None:
    """Fail before any training: empty manifests, vanished files, an unwritable work folder."""
    if not train_manifest or not val_manifest:
        raise ValueError("training needs a non-empty train and val manifest: run data_prep first")
    check_manifest_files(list(train_manifest) + list(val_manifest))
    if cfg.work_dir:
        check_writable(Path(cfg.work_dir) / RESUME_FILE)


def stage_checkpoint(
    result: TrainResult, name: str, classes: ClassTable, cfg: TrainConfig, train_manifest
) -> dict:
    """The stage's checkpoint: final weights, the model that rebuilds them, and how tiles were seen."""
    model_config = {k: v for k, v in result.model_config.items() if k != "pretrained"}
    return make_checkpoint(
        model_config,
        result.state_dict,
        result.iteration,
        {k: result.metrics[k] for k in SUMMARY_KEYS},
        classes.as_config(),
        stage=name,
        preprocess={
            "input_size": cfg.input_size,
            "tile_size": typical_tile_size(train_manifest),
            "normalization": input_normalization(model_config["encoder"]),
        },
    )


def stage_report(result: TrainResult, name: str) -> dict:
    """The stage's metrics file: final and best scores, the evaluation history, the confusion matrix."""
    return {
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


def stage_scores(result: TrainResult) -> dict[str, dict]:
    """The final figures as kedro-mlflow metric items (``{"value", "step"}``), stepped at the iteration."""
    values = {f"final_{k}": result.metrics[k] for k in SUMMARY_KEYS} | {
        "best_val_mIoU": result.best["mIoU"],
        "train_seconds": result.train_seconds,
        "train_images_per_s": result.images_per_s,
    }
    return {k: {"value": float(v), "step": result.iteration} for k, v in values.items()}
