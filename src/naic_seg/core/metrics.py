"""Segmentation scores from one dataset-level confusion matrix (rows: truth, columns: prediction)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from naic_seg.core.labels import IGNORE_INDEX


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``num_classes`` x ``num_classes`` int64 counts; pixels whose truth is ``ignore_index`` are left out."""
    valid = target != ignore_index
    flat = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def scores(confusion: np.ndarray | torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, FWIoU, pixel accuracy and per-class IoU.

    mIoU averages the classes that occur in the truth or the prediction (a class absent from both has
    no IoU). FWIoU weights each class's IoU by its share of the true pixels, the contest's score.
    """
    cm = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion, dtype=np.float64)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    tp = np.diag(cm)
    truth, predicted = cm.sum(axis=1), cm.sum(axis=0)
    union = truth + predicted - tp
    total = cm.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    present = ~np.isnan(iou)
    freq = truth / total if total else np.zeros(n)
    return {
        "mIoU": float(np.mean(iou[present])) if present.any() else 0.0,
        "FWIoU": float(np.sum(freq[present] * iou[present])),
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "per_class_IoU": {
            name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou, strict=True)
        },
        "pixels": int(total),
    }
