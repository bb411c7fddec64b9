"""Nodes of submit: choose checkpoints, predict lazily, build the zip, score it when labels exist."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from naic_seg.core.checkpoint import load_checkpoint
from naic_seg.core.labels import ClassTable
from naic_seg.core.metrics import scores
from naic_seg.core.predict import PredictConfig, predict_manifest
from naic_seg.core.submission import entry_name, submission_entries
from naic_seg.core.tiles import TileListing, tile_id
from naic_seg.datasets.checkpoint import CheckpointFile
from naic_seg.datasets.submission import Submission, SubmissionZip
from naic_seg.tracking import active_run_logger

log = logging.getLogger(__name__)


def select_checkpoints(
    names: list[str] | str, stage1_checkpoint: CheckpointFile, stage2_checkpoint: CheckpointFile
) -> list[dict]:
    """``stage1`` / ``stage2`` name the catalog's checkpoints; anything else is a checkpoint file path.
    Only the checkpoints named are read."""
    by_name = {"stage1": stage1_checkpoint, "stage2": stage2_checkpoint}
    if isinstance(names, str):
        names = [names]
    return [by_name[n].load() if n in by_name else load_checkpoint(n) for n in names]


def predict_test_tiles(
    test_manifest: list[dict],
    stage1_checkpoint: CheckpointFile,
    stage2_checkpoint: CheckpointFile,
    classes: list[dict],
    options: dict,
):
    """A lazy stream of predictions; the pickle dataset writes it record by record."""
    options = dict(options)
    checkpoints = select_checkpoints(
        options.pop("checkpoints", ["stage2"]), stage1_checkpoint, stage2_checkpoint
    )
    table = ClassTable.from_config(classes)
    for ckpt in checkpoints:
        if ckpt.get("classes") not in (None, table.as_config()):
            raise ValueError(
                f"checkpoint '{ckpt.get('source', ckpt.get('stage'))}' was trained on another class "
                "table than parameters' classes"
            )
    log.info(
        "Predicting %d test tiles with %s",
        len(test_manifest),
        ", ".join(str(c.get("source", c.get("stage"))) for c in checkpoints),
    )
    return predict_manifest(test_manifest, checkpoints, PredictConfig(**options), table)


def make_submission(predictions, test_manifest: list[dict], classes: list[dict]) -> Submission:
    """The zip's entries (built lazily from the pickle) and, from each tile's header, its size."""
    expected = {}
    for entry in test_manifest:
        with Image.open(entry["filename"]) as im:
            expected[entry_name(tile_id(entry["filename"]))] = im.size
    values = ClassTable.from_config(classes).values
    return Submission(submission_entries(predictions, values), expected, values)


def evaluate_submission(submission: SubmissionZip, test_labels: TileListing, classes: list[dict]) -> dict:
    """Score the zip against test labels when the catalog has them (NAIC test sets ship none)."""
    table = ClassTable.from_config(classes)
    labels = {tile_id(p): p for p in test_labels.files if p.lower().endswith((".png", ".tif", ".tiff"))}
    if not labels:
        log.info("No test labels in %s: the submission is not scored", test_labels.folder)
        return {"evaluated": False, "reason": f"no labels in {test_labels.folder}"}
    n = table.num_classes
    cm = np.zeros((n, n), dtype=np.int64)
    scored = unlabelled = 0
    for tid, values in submission:
        if tid not in labels:
            unlabelled += 1
            continue
        with Image.open(labels[tid]) as im:
            truth = table.to_index(np.asarray(im))
        pred = table.to_index(values)
        if truth.shape != pred.shape:
            raise ValueError(
                f"prediction for '{tid}' is {pred.shape}, its label '{labels[tid]}' {truth.shape}"
            )
        valid = truth != 255
        cm += np.bincount(truth[valid].astype(np.int64) * n + pred[valid], minlength=n * n).reshape(n, n)
        scored += 1
    result = scores(cm, table.names)
    metrics = {
        "evaluated": True,
        "tiles_scored": scored,
        "tiles_without_label": unlabelled,
        **result,
        "confusion_matrix": cm.tolist(),
    }
    logger = active_run_logger("submit")
    if logger:
        logger(
            {
                "test_mIoU": result["mIoU"],
                "test_FWIoU": result["FWIoU"],
                "test_pixel_accuracy": result["pixel_accuracy"],
                **{f"test_IoU.{k}": v for k, v in result["per_class_IoU"].items()},
            },
            0,
        )
    log.info(
        "submission scored on %d labelled tiles: mIoU %.4f FWIoU %.4f",
        scored,
        result["mIoU"],
        result["FWIoU"],
    )
    return metrics
