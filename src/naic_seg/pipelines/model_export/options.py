"""``model_export``'s parameter block, typed (its values: ``conf/base/parameters_model_export.yml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from naic_seg.core.engines import ENGINES
from naic_seg.core.options import Options
from naic_seg.core.predict import TTA_MODES
from naic_seg.mlflow_model import OUTPUT_VALUES, SERVED_KEYS, served_options


@dataclass(frozen=True)
class ModelExportOptions(Options):
    log_model: bool
    register: bool
    registered_model_name: str
    output_values: Literal[OUTPUT_VALUES]
    tta: Literal[TTA_MODES]
    tta_scales: list[float]
    input_size: int | None
    mode: str  # resize | slide | auto (checked by PredictConfig, as submit's)
    slide_above: int
    window: int | None
    overlap: float
    batch_size: int
    engine: Literal[ENGINES]
    onnx: bool

    def check(self) -> None:
        if not self.registered_model_name.strip():
            raise ValueError("registered_model_name must not be empty")
        if self.slide_above < 1 or self.batch_size < 1:
            raise ValueError(
                f"slide_above and batch_size must be at least 1, got {self.slide_above}, {self.batch_size}"
            )
        if not self.tta_scales or any(s <= 0 for s in self.tta_scales):
            raise ValueError(f"tta_scales must be positive numbers, got {self.tta_scales}")
        served_options(self.model_options())  # PredictConfig's own checks: mode, overlap

    def model_options(self) -> dict:
        """What the served model is built with (``naic_seg.mlflow_model.log_model``)."""
        keys = ("output_values", *SERVED_KEYS, "onnx")
        return {k: getattr(self, k) for k in keys}
