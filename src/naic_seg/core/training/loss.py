"""The training loss: cross-entropy, optionally with class weights and OHEM pixel sampling.

* ``class_weight: balanced`` weighs each class by ``1 / ln(1.02 + p)`` (ENet's inverse-log frequency; ``p``
  the class's share of the training manifest's labelled pixels, counted once per stage), scaled so that the
  pixel-weighted mean weight is 1 and the loss keeps its scale. A class seen 0.2 % of the time weighs about
  13x one seen 30 % of the time, where median-frequency weights would give it 150x. A list gives the
  weights directly, one per class.
* ``ohem_thresh`` switches on mmsegmentation's OHEM pixel sampler (``OHEMPixelSampler``): a pixel counts only
  where the model gives its true class a probability below ``ohem_thresh``, and at least ``ohem_min_kept``
  pixels of each batch (the hardest) count. The loss is the (weighted) mean over the pixels that count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from naic_seg.core.data import read_label
from naic_seg.core.labels import IGNORE_INDEX, ClassTable

log = logging.getLogger(__name__)


def class_frequencies(manifest: Sequence[dict], classes: ClassTable) -> np.ndarray:
    """Each class's share of the labelled pixels of the manifest's labels (ignored pixels left out)."""
    counts = np.zeros(classes.num_classes, dtype=np.int64)
    for entry in manifest:
        index = classes.to_index(read_label(entry["ann"]["seg_map"]))
        counts += np.bincount(index[index != IGNORE_INDEX].ravel(), minlength=classes.num_classes)[
            : classes.num_classes
        ]
    total = counts.sum()
    if total == 0:
        raise ValueError("class_weight: balanced needs labelled pixels; the training labels have none")
    return counts / total


def balanced_weights(frequencies: np.ndarray) -> np.ndarray:
    """ENet's ``1 / ln(1.02 + p)``, scaled to a pixel-weighted mean of 1."""
    w = 1.0 / np.log(1.02 + frequencies)
    return w / float((frequencies * w).sum())


def resolve_class_weight(spec, manifest: Sequence[dict], classes: ClassTable) -> torch.Tensor | None:
    """``None`` | ``"balanced"`` | one weight per class -> a float tensor (or None)."""
    if spec is None or spec == "none":
        return None
    if spec == "balanced":
        freq = class_frequencies(manifest, classes)
        weights = balanced_weights(freq)
        log.info(
            "class weights (balanced, from %d training labels): %s",
            len(manifest),
            ", ".join(
                f"{n} {w:.2f} ({100 * p:.2f} %)" for n, w, p in zip(classes.names, weights, freq, strict=True)
            ),
        )
    elif isinstance(spec, (list, tuple)):
        weights = np.asarray(spec, dtype=np.float64)
        if weights.shape != (classes.num_classes,) or not np.all(weights >= 0) or weights.sum() <= 0:
            raise ValueError(
                f"class_weight needs {classes.num_classes} non-negative weights (one per class: "
                f"{', '.join(classes.names)}), got {list(spec)}"
            )
    else:
        raise ValueError(f"class_weight must be null, balanced or a list of weights, got {spec!r}")
    return torch.as_tensor(weights, dtype=torch.float32)


def check_ohem(thresh: float | None, min_kept: int) -> None:
    if thresh is not None and not 0.0 < thresh <= 1.0:
        raise ValueError(f"ohem_thresh must be in (0, 1] or null, got {thresh}")
    if min_kept < 0:
        raise ValueError(f"ohem_min_kept must be >= 0, got {min_kept}")


class SegmentationLoss:
    """Cross-entropy over ``(N, C, H, W)`` logits and ``(N, H, W)`` labels (255 ignored)."""

    def __init__(self, class_weight: torch.Tensor | None, ohem_thresh: float | None, ohem_min_kept: int):
        check_ohem(ohem_thresh, ohem_min_kept)
        self.class_weight, self.ohem_thresh, self.ohem_min_kept = class_weight, ohem_thresh, ohem_min_kept

    def to(self, device: torch.device) -> SegmentationLoss:
        if self.class_weight is not None:
            self.class_weight = self.class_weight.to(device)
        return self

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.ohem_thresh is None:
            return F.cross_entropy(logits, labels, weight=self.class_weight, ignore_index=IGNORE_INDEX)
        valid = labels != IGNORE_INDEX
        target = torch.where(valid, labels, torch.zeros_like(labels))
        pixel = F.cross_entropy(logits, target, weight=self.class_weight, reduction="none")
        with torch.no_grad():
            keep = valid & self._hard(logits, target, valid)
            weight = keep.float()
            if self.class_weight is not None:
                weight = weight * self.class_weight[target]
        return (pixel * weight).sum() / weight.sum().clamp_min(1e-12)

    def _hard(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """mmsegmentation's OHEM: true-class probability below the threshold, at least ``min_kept`` pixels."""
        prob = logits.softmax(1).gather(1, target.unsqueeze(1)).squeeze(1)
        threshold = self.ohem_thresh
        probs = prob[valid]
        if probs.numel() > 0:  # as mmsegmentation: the (min_kept + 1)-th lowest probability, 0-based min_kept
            kth = probs.kthvalue(min(self.ohem_min_kept + 1, probs.numel())).values.item()
            threshold = max(threshold, kth)
        return prob < threshold
