"""The parameter blocks ``train_stage1`` and ``train_stage2``, typed (``conf/base/parameters_train.yml``).

Stage 1 states its whole model and may start from a checkpoint file (``init_checkpoint``); stage 2 starts
from stage 1's checkpoint, which brings arch, encoder and classes, so its model block sets the stride only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from naic_seg.core.models import ARCHITECTURES, ENCODERS, OUTPUT_STRIDES
from naic_seg.core.options import Options
from naic_seg.core.training import TrainConfig


@dataclass(frozen=True)
class Stage1Model(Options):
    arch: Literal[ARCHITECTURES]
    encoder: Literal[ENCODERS]
    output_stride: Literal[OUTPUT_STRIDES]
    pretrained: str | None  # None (random) | imagenet | a weights file
    aux: bool
    dropout: float

    def check(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class LaterStageModel(Options):
    output_stride: Literal[OUTPUT_STRIDES]


@dataclass(frozen=True)
class TrainDistributed(Options):
    """``train_stageN.distributed``: processes per machine and machines (torchrun's launcher)."""

    nproc: int | Literal["auto"]  # auto: one per CUDA device (1 on CPU)
    nnodes: int
    rdzv_endpoint: str | None  # host:port of the first machine when nnodes > 1
    run_id: str | None  # the same string on every machine when nnodes > 1

    def check(self) -> None:
        if self.nproc != "auto" and self.nproc < 1:
            raise ValueError(f"nproc must be auto or at least 1, got {self.nproc}")
        if self.nnodes < 1:
            raise ValueError(f"nnodes must be at least 1, got {self.nnodes}")


@dataclass(frozen=True)
class _StageOptions(Options):
    """What every stage's block holds; ``model`` is typed by each stage."""

    name: str  # metric prefix in MLflow
    train: TrainConfig
    distributed: TrainDistributed
    log_checkpoint: bool

    def model_params(self) -> dict:
        return dataclasses.asdict(self.model)


@dataclass(frozen=True)
class Stage1Options(_StageOptions):
    init_checkpoint: str | None  # None: start from model.pretrained; or a naic-seg checkpoint file
    model: Stage1Model


@dataclass(frozen=True)
class LaterStageOptions(_StageOptions):
    model: LaterStageModel


def stage_options(params, stage: int) -> Stage1Options | LaterStageOptions:
    """The options of the block ``train_stage<stage>``."""
    kind = Stage1Options if stage == 1 else LaterStageOptions
    return kind.from_params(params, f"train_stage{stage}")
