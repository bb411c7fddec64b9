"""The training engine and what a stage needs around it.

``config`` (the recipe, the schedule), ``engine`` (the model, optimiser and step of a stage, and the loop),
``evaluation`` (hold-out confusion matrix), ``progress`` (log windows, bar), ``resume`` (the resume file),
``launch`` (several processes or machines), ``stage`` (the checks and outputs around one stage).
"""

from naic_seg.core.training.config import TrainConfig, poly_lr
from naic_seg.core.training.engine import NonFiniteLossError, TrainResult, train
from naic_seg.core.training.evaluation import evaluate
from naic_seg.core.training.launch import devices, launch
from naic_seg.core.training.resume import RESUME_FILE
from naic_seg.core.training.stage import (
    check_stage_inputs,
    resolve_model_config,
    stage_checkpoint,
    stage_report,
    stage_scores,
)

__all__ = [
    "RESUME_FILE",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "check_stage_inputs",
    "devices",
    "evaluate",
    "launch",
    "poly_lr",
    "resolve_model_config",
    "stage_checkpoint",
    "stage_report",
    "stage_scores",
    "train",
]
