"""``submit``'s parameter block, typed (its values: ``conf/base/parameters_submit.yml``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from naic_seg.core.distributed import SubmitDistributed
from naic_seg.core.engines import ENGINES
from naic_seg.core.options import Options
from naic_seg.core.predict import TTA_MODES, PredictConfig
from naic_seg.core.runtime import AMP_CHOICES


@dataclass(frozen=True)
class SubmitOptions(Options):
    checkpoints: str | list[str]  # stage1 | stage2 | checkpoint file paths (several: an ensemble)
    tta: Literal[TTA_MODES]
    tta_scales: list[float]
    input_size: int | None
    mode: str  # resize | slide | auto (checked by PredictConfig)
    slide_above: int
    window: int | None
    overlap: float
    batch_size: int
    workers: int
    device: str
    amp: Literal[AMP_CHOICES]
    channels_last: bool | Literal["auto"]
    engine: Literal[ENGINES]
    distributed: SubmitDistributed

    def check(self) -> None:
        check_prediction_keys(self)
        if self.slide_above < 1:
            raise ValueError(f"slide_above must be at least 1, got {self.slide_above}")
        if self.workers < 0:
            raise ValueError(f"workers must be at least 0, got {self.workers}")
        if self.window is not None and self.window < 8:
            raise ValueError(f"window must be null or at least 8 tile pixels, got {self.window}")
        self.predict_config()  # PredictConfig's own checks: mode, overlap in [0, 1)

    def predict_config(self) -> PredictConfig:
        return PredictConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PredictConfig)})


def check_prediction_keys(options) -> None:
    """What submit and map_scenes share: checkpoints, TTA scales, batch size, input size."""
    if not options.checkpoints:
        raise ValueError("checkpoints must name at least one checkpoint (stage1, stage2 or a file)")
    if not options.tta_scales or any(s <= 0 for s in options.tta_scales):
        raise ValueError(f"tta_scales must be positive numbers, got {options.tta_scales}")
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {options.batch_size}")
    size = getattr(options, "input_size", None)
    if size is not None and size < 8:
        raise ValueError(f"input_size must be null or at least 8, got {size}")
