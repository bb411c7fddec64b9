"""``data_prep``'s parameter block, typed (its values: ``conf/base/parameters_data_prep.yml``)."""

from __future__ import annotations

from dataclasses import dataclass

from naic_seg.core.holdout import Fold, GroupTable
from naic_seg.core.options import Options


@dataclass(frozen=True)
class DataPrepOptions(Options):
    holdout: float  # a count (an integer >= 1) or a fraction (< 1); unused with fold
    seed: int
    holdout_groups: GroupTable | None
    fold: Fold | None
    workers: int | None  # None: one per CPU core

    def check(self) -> None:
        if self.holdout < 0 or (self.holdout >= 1 and self.holdout != int(self.holdout)):
            raise ValueError(f"holdout must be a count or a fraction in [0, 1), got {self.holdout}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be null or >= 0, got {self.workers}")
