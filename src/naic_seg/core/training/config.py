"""One stage's recipe and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from naic_seg.core.augment import check_augment
from naic_seg.core.options import Options
from naic_seg.core.runtime import AMP_CHOICES
from naic_seg.core.training.average import check_ema
from naic_seg.core.training.loss import check_ohem

AUGMENT_OFF = {"hflip": False, "vflip": False, "photometric": None, "scale": None}


@dataclass
class TrainConfig(Options):
    """One stage's recipe, ``train_stageN.train``. Its defaults (for Python callers) are ``conf/base``'s
    stage 1 recipe, the reference's, except ``iterations`` and ``work_dir``: each caller states them."""

    iterations: int  # 0: no training; the starting model (e.g. stage 1's) is scored and passed on as it is
    batch_size: int = 4  # per device; the reference ran 4 GPUs x 4 images
    lr: float = 0.01
    min_lr: float = 1e-4
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aux_weight: float = 0.4
    encoder_lr_mult: float = 1.0  # the encoder's learning rate as a fraction of lr (head and aux: lr)
    class_weight: Literal["balanced"] | list[float] | None = None  # None | balanced | per class (.loss)
    ohem_thresh: float | None = None  # None: plain cross-entropy; else mmsegmentation's OHEM pixel sampling
    ohem_min_kept: int = 100000  # OHEM keeps at least this many pixels of each batch (per process)
    input_size: int | None = 512
    augment: dict = field(default_factory=lambda: dict(AUGMENT_OFF))  # see core.augment
    ema: dict | None = None  # None: no average; {decay: 0.999}: evaluate and save an average of the weights
    workers: int = 4
    eval_interval: int = 8000
    eval_batch_size: int | None = 8  # None: batch_size
    log_interval: int = 50
    checkpoint_interval: int = 2000
    seed: int = 1996
    device: str = "auto"
    amp: Literal[AMP_CHOICES] = "auto"  # auto | none | bf16 | fp16
    channels_last: bool | Literal["auto"] = "auto"
    cudnn_benchmark: bool | Literal["auto"] = "auto"
    compile: bool = False
    work_dir: str | None = field(kw_only=True)  # periodic resume checkpoints; None: none
    resume: bool = True
    grid_tiles: int = 8

    def check(self) -> None:
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of auto, none, bf16, fp16; got {self.amp!r}")
        if self.iterations < 0 or self.batch_size < 1:
            raise ValueError(
                "iterations must be >= 0 (0: no training, the starting model is scored and passed on) "
                "and batch_size positive"
            )
        if self.encoder_lr_mult < 0:
            raise ValueError(f"encoder_lr_mult must be >= 0, got {self.encoder_lr_mult}")
        for key in ("eval_interval", "log_interval", "checkpoint_interval"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        check_ohem(self.ohem_thresh, self.ohem_min_kept)
        check_augment(self.augment)
        check_ema(self.ema)

    def fingerprint(self, model_config: dict, n_train: int, world_size: int) -> dict:
        """What must match for a resume to continue the same run."""
        keys = (
            "iterations",
            "batch_size",
            "lr",
            "min_lr",
            "power",
            "momentum",
            "weight_decay",
            "aux_weight",
            "encoder_lr_mult",
            "class_weight",
            "ohem_thresh",
            "ohem_min_kept",
            "input_size",
            "augment",
            "ema",
            "seed",
        )
        fields = {k: getattr(self, k) for k in keys}
        # An option set to null is off, as if absent: resume files written before it existed still match.
        fields["augment"] = {k: v for k, v in self.augment.items() if v is not None}
        return {"model": dict(model_config), **fields, "n_train": n_train, "world_size": world_size}

    def lr_at(self, iteration: int) -> float:
        return poly_lr(iteration, self.iterations, self.lr, self.min_lr, self.power)

    def due(self, done: int) -> tuple[bool, bool, bool]:
        """(log, evaluate, checkpoint) after ``done`` iterations; all three at the last one."""
        last = done == self.iterations
        return (
            last or done % self.log_interval == 0,
            last or done % self.eval_interval == 0,
            last or done % self.checkpoint_interval == 0,
        )


def poly_lr(iteration: int, max_iterations: int, base_lr: float, min_lr: float, power: float = 0.9) -> float:
    """mmsegmentation's poly schedule: ``(base - min) * (1 - it / max) ** power + min``."""
    return (base_lr - min_lr) * (1 - iteration / max_iterations) ** power + min_lr
