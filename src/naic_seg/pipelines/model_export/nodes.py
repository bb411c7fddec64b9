"""The node that hands the trained model to MLflow: pyfunc model, registry version, its tags."""

from __future__ import annotations

import logging

import mlflow

from naic_seg.core.checkpoint import CheckpointFile, open_checkpoint
from naic_seg.mlflow_model import log_model, tag_registered_version
from naic_seg.pipelines.model_export.options import ModelExportOptions

log = logging.getLogger(__name__)


def log_mlflow_model(stage2_checkpoint: CheckpointFile, stage2_metrics: dict, options: dict) -> dict:
    """Log stage 2's checkpoint as the run's MLflow model ``model``; register it when switched on."""
    opts = ModelExportOptions.from_params(options, "model_export")
    if not opts.log_model or mlflow.active_run() is None:
        log.info("No MLflow model logged (log_model is off or there is no active MLflow run)")
        return {"logged": False}
    scores = {f"val_{k}": stage2_metrics["final"][k] for k in ("mIoU", "FWIoU")}
    name = opts.registered_model_name if opts.register else None
    info = log_model([open_checkpoint(stage2_checkpoint)], scores, opts.model_options(), name)
    version = info.registered_model_version
    if version is not None:
        description = f"naic-seg stage 2, run {mlflow.active_run().info.run_id}: hold-out " + ", ".join(
            f"{k} {v:.4f}" for k, v in scores.items()
        )
        tag_registered_version(name, version, scores, description)
    log.info(
        "MLflow model %s%s", info.model_uri, f" registered as {name} version {version}" if version else ""
    )
    return {"logged": True, "model_uri": info.model_uri, "registered_model": name, "version": version}
