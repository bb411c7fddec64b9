"""``model_export``'s parameter block, typed (its values: ``conf/base/parameters_model_export.yml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from naic_seg.core.engines import ENGINES
from naic_seg.core.options import Options
from naic_seg.core.predict import TTA_MODES
from naic_seg.mlflow_model import OUTPUT_VALUES


@dataclass(frozen=True)
class ModelExportOptions(Options):
    log_model: bool
    register: bool
    registered_model_name: str
    output_values: Literal[OUTPUT_VALUES]
    tta: Literal[TTA_MODES]
    engine: Literal[ENGINES]
    onnx: bool

    def check(self) -> None:
        if not self.registered_model_name.strip():
            raise ValueError("registered_model_name must not be empty")

    def model_options(self) -> dict:
        """What the served model is built with (``naic_seg.mlflow_model.log_model``)."""
        keys = ("output_values", "tta", "engine", "onnx")
        return {k: getattr(self, k) for k in keys}
