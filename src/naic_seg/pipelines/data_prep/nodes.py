from __future__ import annotations

from naic_seg.core.labels import ClassTable
from naic_seg.core.tiles import TileListing, prepare
from naic_seg.pipelines.data_prep.options import DataPrepOptions
from naic_seg.tracking import log_metrics, log_params

# MLflow keeps a parameter value to 6000 characters; the report artifact lists every group.
MLFLOW_PARAM_LIMIT = 6000


def prepare_manifests(
    train_images: TileListing,
    train_labels: TileListing,
    test_images: TileListing,
    classes: list[dict],
    ignore_values: list[int],
    options: dict,
) -> tuple[list[dict], list[dict], list[dict], dict]:
    """Validate every raw tile, then split the seeded hold-out; raises before anything is written."""
    opts = DataPrepOptions.from_params(options, "data_prep")
    table = ClassTable.from_config(classes)
    prepared = prepare(
        train_images,
        train_labels,
        test_images,
        label_values=table.values,
        class_names=table.names,
        ignore_values=ignore_values,
        holdout=opts.holdout,
        seed=opts.seed,
        workers=opts.workers,
        groups=opts.holdout_groups,
        fold=opts.fold,
    )
    log_holdout(prepared.report)
    return prepared.train_manifest, prepared.val_manifest, prepared.test_manifest, prepared.report


def log_holdout(report: dict) -> None:
    """The hold-out's kind, its groups and the per-class pixel shares of both sides, into the MLflow run."""
    holdout = report["holdout"]
    params = {"holdout.kind": holdout["kind"]}
    if holdout["kind"] == "grouped":
        held, count = ",".join(holdout["held_out"]), len(holdout["held_out"])
        if len(held) > MLFLOW_PARAM_LIMIT:
            held = held[: MLFLOW_PARAM_LIMIT - 40].rsplit(",", 1)[0] + f",... ({count} in all)"
        params["holdout.groups_held_out"] = held
    log_params(params)
    metrics = {"holdout.val_tiles": report["counts"]["val"]}
    if holdout["kind"] == "grouped":
        metrics["holdout.val_groups"] = holdout["groups"]["val"]
    for side in ("train", "val"):
        for c in report[f"{side}_pixels"]["classes"]:
            metrics[f"holdout.{side}_share.{c['name']}"] = c["frequency"]
    log_metrics(metrics)
