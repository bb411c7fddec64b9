"""The NAIC 2020 class table and the mapping between stored label values and class indices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = 255

# A fixed colour per class index (up to 16), shared by figures, map colour tables and served models.
PALETTE = np.array(
    [
        [31, 119, 180],
        [127, 127, 127],
        [214, 39, 40],
        [255, 187, 120],
        [152, 223, 138],
        [44, 160, 44],
        [140, 86, 75],
        [227, 119, 194],
        [23, 190, 207],
        [188, 189, 34],
        [148, 103, 189],
        [255, 127, 14],
        [174, 199, 232],
        [197, 176, 213],
        [196, 156, 148],
        [219, 219, 141],
    ],
    dtype=np.uint8,
)

NAIC_CLASSES: tuple[tuple[int, str], ...] = (
    (100, "water"),
    (200, "transport"),
    (300, "building"),
    (400, "farmland"),
    (500, "grassland"),
    (600, "forest"),
    (700, "bare_soil"),
    (800, "other"),
)


class ClassTable:
    """Stored label values <-> training indices. Index ``i`` is stored as ``values[i]``.

    Any stored value not in ``values`` maps to :data:`IGNORE_INDEX` (no loss, no score).
    """

    def __init__(self, values: Sequence[int], names: Sequence[str] | None = None):
        values = [int(v) for v in values]
        if not values:
            raise ValueError("a class table needs at least one class value")
        if len(set(values)) != len(values):
            raise ValueError(f"class values must be distinct, got {values}")
        if any(not 0 < v < 65536 for v in values):
            raise ValueError(f"class values must be in 1..65535 (0 is reserved for ignore): {values}")
        if len(values) >= IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX - 1} classes are supported")
        self.values = tuple(values)
        self.names = tuple(names) if names is not None else tuple(f"class_{v}" for v in values)
        if len(self.names) != len(self.values):
            raise ValueError("class names and values differ in length")
        lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
        lut[list(self.values)] = np.arange(len(self.values), dtype=np.uint8)
        self._to_index = lut

    @classmethod
    def naic(cls) -> ClassTable:
        return cls([v for v, _ in NAIC_CLASSES], [n for _, n in NAIC_CLASSES])

    @classmethod
    def from_config(cls, classes: Sequence[dict] | None) -> ClassTable:
        """Build from a parameters list like ``[{"value": 100, "name": "water"}, ...]``."""
        if not classes:
            return cls.naic()
        return cls([c["value"] for c in classes], [c.get("name", f"class_{c['value']}") for c in classes])

    @property
    def num_classes(self) -> int:
        return len(self.values)

    def to_index(self, label: np.ndarray) -> np.ndarray:
        """Stored values (any integer dtype) -> uint8 class indices, unknown values -> 255."""
        return self._to_index[label.astype(np.uint16, copy=False)]

    def to_value(self, index: np.ndarray) -> np.ndarray:
        """Class indices -> uint16 stored values (the submission's encoding)."""
        lut = np.zeros(256, dtype=np.uint16)
        lut[: self.num_classes] = self.values
        return lut[index.astype(np.uint8, copy=False)]

    def as_config(self) -> list[dict]:
        return [{"value": v, "name": n} for v, n in zip(self.values, self.names, strict=True)]
