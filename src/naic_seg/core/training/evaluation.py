"""Evaluation on the hold-out: a dataset-level confusion matrix at each tile's own size, and a few tiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from naic_seg.core.data import ManifestDataset, read_image
from naic_seg.core.labels import ClassTable
from naic_seg.core.metrics import confusion_matrix
from naic_seg.core.predict import class_map
from naic_seg.core.runtime import Runtime


class _Grid:
    """The first ``limit`` tiles seen (the loader keeps manifest order): image, label, prediction."""

    def __init__(self, shard: Sequence[dict], limit: int):
        self.shard, self.limit, self.tiles = shard, limit, []

    def add(self, labels: torch.Tensor, preds: torch.Tensor) -> None:
        for k in range(min(len(labels), max(0, self.limit - len(self.tiles)))):
            entry = self.shard[len(self.tiles)]
            self.tiles.append(
                {
                    "id": Path(entry["filename"]).stem,
                    "image": read_image(entry["filename"]),
                    "label": labels[k].cpu().numpy().astype(np.uint8),
                    "pred": preds[k].cpu().numpy().astype(np.uint8),
                }
            )


def _label_chunks(logits: torch.Tensor, labels):
    """One chunk for a batch of equal-sized labels; one per tile when the original sizes differ."""
    if isinstance(labels, torch.Tensor):
        return [(logits, labels)]
    return [(logits[i : i + 1], lab[None]) for i, lab in enumerate(labels)]


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    manifest: Sequence[dict],
    classes: ClassTable,
    input_size: int | None,
    batch_size: int,
    workers: int,
    runtime: Runtime,
    normalization: dict | None = None,
    grid_tiles: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[np.ndarray, list[dict]]:
    """Confusion matrix over ``manifest`` (summed over ranks), plus rank 0's first ``grid_tiles`` tiles."""
    shard = list(manifest[rank::world_size])
    dataset = ManifestDataset(shard, classes, input_size, label_size="original")
    loader = runtime.loader(dataset, batch_size, workers)
    prepare = runtime.normalizer(normalization)
    n = classes.num_classes
    cm = torch.zeros(n, n, dtype=torch.int64, device=runtime.device)
    grid = _Grid(shard, grid_tiles if rank == 0 else 0)
    was_training = model.training
    model.eval()
    for batch in loader:
        with runtime.autocast():
            logits = model(prepare(batch["image"]))
        for chunk, labels in _label_chunks(logits, batch["label"]):
            labels = labels.to(runtime.device, non_blocking=True)
            preds = class_map(chunk.float(), labels.shape[-2:])
            cm += confusion_matrix(preds, labels, n)
            grid.add(labels, preds)
    if world_size > 1:
        dist.all_reduce(cm)
    model.train(was_training)
    return cm.cpu().numpy(), grid.tiles
