"""The validation hold-out: random tiles, or whole groups of tiles (source scenes), and K folds of groups.

Tiles cut from one scene are alike, so a random tile hold-out puts neighbours of every training tile on
the validation side and measures how well a model remembers its scenes. A grouped hold-out keeps every
tile of a group on one side (a group is typically the source image a tile was cut from).

The grouped hold-out, for a target of ``k`` tiles (a count, or a fraction of the labelled tiles):

1. the groups, sorted by key, are put in one seeded order (``random.Random(seed).shuffle``);
2. class cover: for each class with labelled pixels, rarest first (fewest groups holding it), that the
   hold-out does not hold yet, the first group in the seeded order that holds it is taken, if it fits
   (hold-out plus group at most ``k`` tiles);
3. fill: the remaining groups in the seeded order are taken while the hold-out is below ``k``, each one
   only if it brings the count nearer to ``k``; so the hold-out ends within one group's size of ``k``.

No group is ever taken if it would leave the training side without any pixel of a class it has.

K folds: fold 0 is such a hold-out of ``n / K`` tiles; fold 1 the same from the groups left, aiming at
``left / (K - 1)`` tiles; and so on; the last fold takes every group left. Each group is in exactly one
fold, and fold ``i`` used as the hold-out trains on all the others.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from naic_seg.core.options import Options

Problem = tuple[str, str]


@dataclass(frozen=True)
class GroupTable(Options):
    """``data_prep.holdout_groups``: a CSV mapping tile id -> group; ``pattern``'s first capture group, if
    given, extracts the key. (``conf/base`` has no table, so it states none of these keys: ``id_column`` and
    ``pattern`` may be left out.)"""

    csv: str
    group_column: str
    id_column: str = "id"
    pattern: str | None = None

    optional_keys = ("id_column", "pattern")

    def describe(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def read(self) -> tuple[dict[str, str], list[Problem]]:
        """(tile id -> group key, problems): a missing file or column, a bad or unmatched pattern."""
        regex, problems = self._compile()
        path = Path(self.csv)
        if not path.is_file():
            missing = (self.csv, "hold-out group table not found (data_prep.holdout_groups.csv)")
            return {}, [*problems, missing]
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in (self.id_column, self.group_column) if c not in columns]
            if missing:
                return {}, [*problems, (self.csv, f"no column {missing} (columns: {columns})")]
            if problems:
                return {}, problems
            groups: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                problem = self._add_row(groups, row, regex)
                if problem:
                    problems.append((f"{self.csv} line {line}", problem))
        return groups, problems

    def _compile(self) -> tuple[re.Pattern | None, list[Problem]]:
        where = "data_prep.holdout_groups.pattern"
        if self.pattern is None:
            return None, []
        try:
            regex = re.compile(self.pattern)
        except re.error as err:
            return None, [(where, f"{self.pattern!r} is not a valid regular expression: {err}")]
        if regex.groups < 1:
            return None, [(where, f"{self.pattern!r} has no capture group: its first group is the key")]
        return regex, []

    def _add_row(self, groups: dict[str, str], row: dict, regex: re.Pattern | None) -> str | None:
        tid, value = (row.get(self.id_column) or "").strip(), row.get(self.group_column) or ""
        key = value
        if regex is not None:
            match = regex.search(value)
            if match is None or not match.group(1):
                return f"pattern {self.pattern!r} finds no key in {self.group_column} {value!r}"
            key = match.group(1)
        if not tid or not key:
            return f"empty {self.id_column if not tid else self.group_column}"
        if groups.setdefault(tid, key) != key:
            return f"id {tid} appears twice, in groups {groups[tid]!r} and {key!r}"
        return None


@dataclass(frozen=True)
class Fold(Options):
    """``data_prep.fold``: fold ``index`` of ``k`` folds of groups is the hold-out."""

    k: int
    index: int

    def check(self) -> None:
        if self.k < 2:
            raise ValueError(f"k must be at least 2, got {self.k}")
        if not 0 <= self.index < self.k:
            raise ValueError(f"index must be in [0, k) = [0, {self.k}), got {self.index}")


def holdout_target(n: int, holdout: float | int) -> int:
    """Tiles to hold out: ``holdout`` is a count (>= 1) or a fraction (< 1) of ``n``."""
    if isinstance(holdout, bool) or holdout < 0:
        raise ValueError(f"holdout must be a non-negative count or a fraction in (0, 1), got {holdout!r}")
    k = round(holdout * n) if holdout < 1 else int(holdout)
    if holdout and not 0 < k < n:
        raise ValueError(f"holdout {holdout!r} of {n} tiles leaves no training or no validation tile")
    return k


def split_holdout(n: int, holdout: float | int, seed: int) -> np.ndarray:
    """Boolean mask of a random tile hold-out: ``holdout`` is a count (>= 1) or a fraction (< 1)."""
    k = holdout_target(n, holdout)
    mask = np.zeros(n, dtype=bool)
    mask[random.Random(seed).sample(range(n), k)] = True
    return mask


class _Groups:
    """Tiles gathered by group: keys sorted, tiles and class pixels per group, one seeded group order."""

    def __init__(self, tile_groups: Sequence[str], class_pixels: np.ndarray, seed: int):
        self.keys = sorted(set(tile_groups))
        index = {key: i for i, key in enumerate(self.keys)}
        self.of_tile = np.array([index[g] for g in tile_groups], dtype=np.int64)
        self.sizes = np.bincount(self.of_tile, minlength=len(self.keys))
        self.pixels = np.zeros((len(self.keys), class_pixels.shape[1]), dtype=np.int64)
        np.add.at(self.pixels, self.of_tile, class_pixels)
        self.total = self.pixels.sum(axis=0)
        self.order = list(range(len(self.keys)))
        random.Random(seed).shuffle(self.order)

    def pick(self, available: list[int], target: int) -> list[int]:
        """Groups out of ``available`` (in seeded order) for a hold-out of about ``target`` tiles."""
        picked: dict[int, None] = {}  # insertion-ordered set
        held, held_pixels = 0, np.zeros_like(self.total)

        def keeps_training(g: int) -> bool:
            after = held_pixels + self.pixels[g]
            return bool(np.all((after < self.total) | (self.total == 0)))

        def take(g: int) -> None:
            nonlocal held, held_pixels
            picked[g] = None
            held += int(self.sizes[g])
            held_pixels = held_pixels + self.pixels[g]

        holders = (self.pixels[available] > 0).sum(axis=0)
        for c in sorted(np.flatnonzero(holders), key=lambda c: (holders[c], c)):
            if held_pixels[c]:
                continue
            for g in available:
                fits = held + self.sizes[g] <= target
                if g not in picked and self.pixels[g, c] and fits and keeps_training(g):
                    take(g)
                    break
        for g in available:
            if held >= target:
                break
            if g not in picked and self.sizes[g] < 2 * (target - held) and keeps_training(g):
                take(g)
        return list(picked)


def grouped_holdout(
    tile_groups: Sequence[str], class_pixels: np.ndarray, holdout: float | int, seed: int
) -> np.ndarray:
    """Boolean mask of a hold-out of whole groups (the module's algorithm); ``class_pixels`` is tiles x
    classes (labelled pixels only)."""
    target = holdout_target(len(tile_groups), holdout)
    groups = _Groups(tile_groups, class_pixels, seed)
    mask = np.isin(groups.of_tile, groups.pick(groups.order, target))
    _check_sides(mask, f"a grouped hold-out of {target} tiles", groups)
    return mask


def group_folds(tile_groups: Sequence[str], class_pixels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every tile: K folds of whole groups, each a grouped hold-out of about n / K."""
    groups = _Groups(tile_groups, class_pixels, seed)
    if len(groups.keys) < k:
        raise ValueError(f"{k} folds need at least {k} groups; the tiles form {len(groups.keys)}")
    fold_of_group = np.full(len(groups.keys), k - 1, dtype=np.int64)
    left = list(groups.order)
    for fold in range(k - 1):
        target = round(int(groups.sizes[left].sum()) / (k - fold))
        picked = set(groups.pick(left, target))
        fold_of_group[list(picked)] = fold
        left = [g for g in left if g not in picked]
    folds = fold_of_group[groups.of_tile]
    for fold in range(k):
        _check_sides(folds == fold, f"fold {fold} of {k}", groups)
    return folds


def _check_sides(mask: np.ndarray, what: str, groups: _Groups) -> None:
    if not mask.any() or mask.all():
        side = "no validation tile" if not mask.any() else "no training tile"
        raise ValueError(
            f"{what} has {side}: the {len(groups.keys)} groups hold {int(groups.sizes.min())} to "
            f"{int(groups.sizes.max())} tiles each; ask for another size or use finer groups"
        )


def choose_holdout(
    class_pixels: np.ndarray,
    holdout: float | int,
    seed: int,
    tile_groups: Sequence[str] | None = None,
    fold: Fold | None = None,
) -> np.ndarray:
    """The hold-out mask: random tiles (no groups, no fold: the original split, unchanged), whole groups,
    or fold ``fold.index`` of K folds (of groups, or of single tiles without groups)."""
    n = len(class_pixels)
    if fold is None:
        if tile_groups is None:
            return split_holdout(n, holdout, seed)
        return grouped_holdout(tile_groups, class_pixels, holdout, seed)
    keys = tile_groups if tile_groups is not None else [str(i) for i in range(n)]
    return group_folds(keys, class_pixels, fold.k, seed) == fold.index
