"""Nodes of submit: choose checkpoints, predict lazily, build the zip, score it when labels exist."""

from __future__ import annotations

import logging

from naic_seg.core.checkpoint import CheckpointFile, select_checkpoints
from naic_seg.core.data import check_manifest_files
from naic_seg.core.distributed import ModelSpec, client_predictor
from naic_seg.core.distributed_submit import distributed_records
from naic_seg.core.labels import ClassTable
from naic_seg.core.predict import Predictor, predict_tiles
from naic_seg.core.submission import (
    LABEL_SUFFIXES,
    expected_entries,
    prediction_records,
    score_submission,
    scores_as_metrics,
    submission_entries,
)
from naic_seg.core.tiles import TileListing
from naic_seg.datasets.submission import Submission, SubmissionZip
from naic_seg.pipelines.submit.options import SubmitOptions
from naic_seg.tracking import log_params

log = logging.getLogger(__name__)


def predict_test_tiles(
    test_manifest: list[dict],
    stage1_checkpoint: CheckpointFile,
    stage2_checkpoint: CheckpointFile,
    classes: list[dict],
    options: dict,
):
    """A lazy stream of PNG records; the pickle dataset writes it record by record. Only the checkpoints
    ``options.checkpoints`` names are read (``stage1``, ``stage2`` or file paths: an ensemble)."""
    opts = SubmitOptions.from_params(options, "submit")
    distributed, cfg = opts.distributed, opts.predict_config()
    available = {"stage1": stage1_checkpoint, "stage2": stage2_checkpoint}
    checkpoints = select_checkpoints(opts.checkpoints, available)
    sources = ", ".join(str(c.get("source", c.get("stage"))) for c in checkpoints)
    log.info("Predicting %d test tiles with %s", len(test_manifest), sources)
    check_manifest_files(test_manifest)
    table = ClassTable.from_config(classes)
    if not distributed.in_process:  # checked here, predicted by chunks on the cluster's workers
        client_predictor(checkpoints, cfg, table)
        log_params({"submit.distributed.address": distributed.address, "submit.engine_asked": cfg.engine})
        return distributed_records(test_manifest, ModelSpec.of(checkpoints, cfg, table), distributed)
    predictor = Predictor.from_checkpoints(checkpoints, cfg, table)
    log_params({"submit.engine_used": predictor.engine.describe()[:500]})
    return prediction_records(predict_tiles(test_manifest, predictor))


def make_submission(predictions, test_manifest: list[dict], classes: list[dict]) -> Submission:
    """The zip's entries (built lazily from the pickle) and the size each must have."""
    values = ClassTable.from_config(classes).values
    return Submission(submission_entries(predictions, values), expected_entries(test_manifest), values)


def evaluate_submission(
    submission: SubmissionZip, test_labels: TileListing, classes: list[dict]
) -> tuple[dict, dict]:
    """Score the zip against test labels when the catalog has them (NAIC test sets ship none)."""
    if not any(p.lower().endswith(LABEL_SUFFIXES) for p in test_labels.files):
        log.info("No test labels in %s: the submission is not scored", test_labels.folder)
        return {"evaluated": False, "reason": f"no labels in {test_labels.folder}"}, {}
    metrics = score_submission(submission, test_labels.files, ClassTable.from_config(classes))
    log.info(
        "submission scored on %d labelled tiles: mIoU %.4f FWIoU %.4f",
        metrics["tiles_scored"],
        metrics["mIoU"],
        metrics["FWIoU"],
    )
    return metrics, scores_as_metrics(metrics)
