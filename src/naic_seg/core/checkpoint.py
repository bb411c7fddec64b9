"""The checkpoint format: a plain dict of tensors and primitives, safe to read with ``weights_only``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from naic_seg.core.atomic import atomic_path

FORMAT = "naic-seg-checkpoint/1"
MODEL_KEYS = ("arch", "encoder", "output_stride", "num_classes")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of another format, or does not fit the model asked for."""


def make_checkpoint(
    model_config: dict,
    state_dict: dict,
    iteration: int,
    metrics: dict | None,
    classes: list[dict],
    stage: str | None = None,
    preprocess: dict | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": dict(model_config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "iteration": int(iteration),
        "metrics": metrics or {},
        "classes": list(classes),
        "stage": stage,
        "preprocess": preprocess or {},  # e.g. {"input_size": 512}: prediction resizes tiles the same way
    }


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({k: v for k, v in checkpoint.items() if k != "source"}, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a naic-seg checkpoint (never unpickling arbitrary objects) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot read checkpoint '{path}': {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not a naic-seg checkpoint (expected format '{FORMAT}'); "
            "to start from backbone weights use the model's 'pretrained' parameter instead"
        )
    missing = [k for k in MODEL_KEYS if k not in ckpt.get("model", {})]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks model configuration keys {missing}")
    ckpt["source"] = str(path)  # for error messages; not saved back
    return ckpt
