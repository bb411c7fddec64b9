from __future__ import annotations

from naic_seg.core.labels import ClassTable
from naic_seg.core.tiles import TileListing, prepare


def prepare_manifests(
    train_images: TileListing,
    train_labels: TileListing,
    test_images: TileListing,
    classes: list[dict],
    ignore_values: list[int],
    options: dict,
) -> tuple[list[dict], list[dict], list[dict], dict]:
    """Validate every raw tile, then split the seeded hold-out; raises before anything is written."""
    table = ClassTable.from_config(classes)
    prepared = prepare(
        train_images,
        train_labels,
        test_images,
        label_values=table.values,
        class_names=table.names,
        ignore_values=ignore_values,
        holdout=options.get("holdout", 0.05),
        seed=options.get("seed", 1996),
        workers=options.get("workers"),
    )
    return prepared.train_manifest, prepared.val_manifest, prepared.test_manifest, prepared.report
