"""An exponential moving average of a stage's weights (mmsegmentation's ``EMAHook`` idea).

After every optimiser step ``average = d * average + (1 - d) * weights`` for each parameter, with
``d = min(decay, (1 + t) / (10 + t))`` at iteration ``t`` (TensorFlow's ``ExponentialMovingAverage`` with
``num_updates``): the early average follows the weights instead of holding the starting point for
``1 / (1 - decay)`` iterations. Buffers (BatchNorm's running statistics and counters) are copied from the
trained model, not averaged (mmengine's default, ``update_buffers=False``): they describe the activations
of the current weights. The average is what a stage evaluates and saves when ``ema`` is set.
"""

from __future__ import annotations

import copy

import torch

EMA_KEYS = ("decay",)


def check_ema(ema: dict | None) -> None:
    if ema is None:
        return
    if not isinstance(ema, dict) or set(ema) - set(EMA_KEYS) or "decay" not in ema:
        raise ValueError(f"ema must be null or {{decay: d}} with 0 < d < 1, got {ema!r}")
    if not 0 < float(ema["decay"]) < 1:
        raise ValueError(f"ema.decay must be in (0, 1), got {ema['decay']!r}")


def ema_decay(decay: float, iteration: int) -> float:
    """The decay applied at ``iteration`` (1 for the first step): warmed up, at most ``decay``."""
    return min(float(decay), (1 + iteration) / (10 + iteration))


class WeightAverage:
    """A copy of the model whose parameters are the moving average of the trained model's."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, iteration: int) -> None:
        d = ema_decay(self.decay, iteration)
        for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
            average.mul_(d).add_(current.detach(), alpha=1 - d)
        for average, current in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(current)
