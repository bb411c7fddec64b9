"""The checkpoint format: a plain dict of tensors and primitives, safe to read with ``weights_only``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from naic_seg.core.atomic import atomic_path
from naic_seg.core.labels import ClassTable

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
    """``preprocess`` says how the model saw its tiles: ``input_size`` (the model's input side) and
    ``tile_size`` (the side of the tiles it was trained on), so prediction sees imagery at the same scale."""
    return {
        "format": FORMAT,
        "model": dict(model_config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "iteration": int(iteration),
        "metrics": metrics or {},
        "classes": list(classes),
        "stage": stage,
        "preprocess": preprocess or {},  # e.g. {"input_size": 128, "tile_size": 256}
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


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint on disk, read only when someone asks for it (submit may not need every stage's)."""

    name: str
    path: Path | None  # None: no version has been saved yet

    def load(self) -> dict:
        if self.path is None:
            raise FileNotFoundError(
                f"{self.name} has no saved version yet: run the pipeline that writes it first"
            )
        return load_checkpoint(self.path)


def open_checkpoint(source: str | Path | CheckpointFile | Mapping | None) -> dict | None:
    """The one way in: a file path, a catalog :class:`CheckpointFile`, an already-open checkpoint or None."""
    if source is None or isinstance(source, dict):
        return source
    if isinstance(source, CheckpointFile):
        return source.load()
    if isinstance(source, str | Path):
        return load_checkpoint(source)
    raise TypeError(f"cannot open a checkpoint from {type(source).__name__}")


def check_classes(checkpoint: Mapping, classes: ClassTable) -> None:
    """A checkpoint predicts the class table it was trained on; refuse one trained on another."""
    stored = checkpoint.get("classes")
    if stored not in (None, classes.as_config()):
        raise CheckpointError(
            f"checkpoint '{checkpoint.get('source', checkpoint.get('stage'))}' was trained on another class "
            f"table ({stored}) than the one in parameters ({classes.as_config()})"
        )


def select_checkpoints(names: Sequence[str] | str, available: Mapping[str, CheckpointFile]) -> list[dict]:
    """Open the checkpoints ``names`` asks for: a key of ``available`` (the catalog's ``stage1``,
    ``stage2``) or a checkpoint file path. Only those named are read."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("no checkpoint to predict with")
    return [open_checkpoint(available.get(name, name)) for name in names]
