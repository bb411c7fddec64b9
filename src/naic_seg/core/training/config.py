"""One stage's recipe and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from naic_seg.core.augment import check_augment
from naic_seg.core.runtime import AMP_CHOICES
from naic_seg.core.training.average import check_ema
from naic_seg.core.training.loss import check_ohem


@dataclass
class TrainConfig:
    """One stage's recipe. Defaults are the reference's; ``auto`` switches follow the runtime policy."""

    iterations: int  # 0: no training; the starting model (e.g. stage 1's) is scored and passed on as it is
    batch_size: int = 4  # per device; the reference ran 4 GPUs x 4 images
    lr: float = 0.01
    min_lr: float = 1e-4
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aux_weight: float = 0.4
    encoder_lr_mult: float = 1.0  # the encoder's learning rate as a fraction of lr (head and aux: lr)
    class_weight: str | list | None = None  # None | balanced | one weight per class (see .loss)
    ohem_thresh: float | None = None  # None: plain cross-entropy; else mmsegmentation's OHEM pixel sampling
    ohem_min_kept: int = 100000  # OHEM keeps at least this many pixels of each batch (per process)
    input_size: int | None = 512
    augment: dict = field(default_factory=dict)  # hflip, vflip, photometric, scale: see core.augment
    ema: dict | None = None  # None: no average; {decay: 0.999}: evaluate and save an average of the weights
    workers: int = 2
    eval_interval: int = 8000
    eval_batch_size: int | None = None
    log_interval: int = 50
    checkpoint_interval: int = 1000
    seed: int = 1996
    device: str = "auto"
    amp: str = "auto"  # auto | none | bf16 | fp16
    channels_last: bool | str = "auto"
    cudnn_benchmark: bool | str = "auto"
    compile: bool = False
    work_dir: str | None = None
    resume: bool = True
    grid_tiles: int = 8

    @classmethod
    def from_params(cls, params: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(f"unknown training parameter(s) {unknown}; valid: {sorted(names)}")
        cfg = cls(**params)
        if cfg.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of auto, none, bf16, fp16; got {cfg.amp!r}")
        if cfg.iterations < 0 or cfg.batch_size < 1:
            raise ValueError(
                "iterations must be >= 0 (0: no training, the starting model is scored and passed on) "
                "and batch_size positive"
            )
        if cfg.encoder_lr_mult < 0:
            raise ValueError(f"encoder_lr_mult must be >= 0, got {cfg.encoder_lr_mult}")
        check_ohem(cfg.ohem_thresh, cfg.ohem_min_kept)
        check_augment(cfg.augment)
        check_ema(cfg.ema)
        return cfg

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
