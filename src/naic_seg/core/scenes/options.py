"""What scene mapping is asked to do: :class:`SceneOptions`, what a scene is (:class:`SceneInfo`), the error
a bad one raises, and :func:`fit_to_model`, which sets the options that the model decides (window, fill)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from naic_seg.core.normalization import mean_colour
from naic_seg.core.windows import window_stride

SCENE_SUFFIXES = (".tif", ".tiff")
LABEL_SUFFIX = "_label"
OUTPUT_VALUES = ("index", "naic")
NODATA_FILLS = ("mirror", "mean", "none")


class SceneError(ValueError):
    """A scene (or its label) that cannot be mapped, named with the reason."""


@dataclass
class SceneOptions:
    """How a scene is cut and what the map holds.

    ``bands``: the 1-based bands to use as R, G, B (None: 1, 2, 3). ``scaling``: None maps uint8 scenes only;
    ``{"method": "percentile", "low": 2, "high": 98}`` stretches each band linearly between those percentiles
    of its valid pixels (from a decimated read) to 0..255, for uint16 or float imagery.
    ``output_values``: ``index`` writes class indices as uint8 (nodata 255); ``naic`` writes the stored class
    values (100..800, which do not fit a byte) as uint16 (nodata 0, the contest's "unlabelled").
    ``nodata_fill``: what the model sees in the nodata part of a window (the map stays nodata there):
    ``mirror`` mirrors the window's valid part out when it is a rectangle (a scene's edge, a tile among
    nodata) and otherwise paints nodata ``fill_colour`` (the normalisation's mean: 0 once normalised);
    ``mean`` always paints; ``none`` leaves the pixels as read (often black, which no training tile had).
    """

    window: int | None = None  # scene pixels per window; needed to map, not to read maps back
    overlap: float = 0.25
    batch_size: int = 8
    bands: Sequence[int] | None = None
    scaling: dict | None = None
    output_values: str = "index"
    progress_every_s: float = 10.0
    nodata_fill: str = "mirror"
    fill_colour: Sequence[int] | None = None  # None: ImageNet's mean colour

    def __post_init__(self):
        if self.window is not None:
            if int(self.window) < 8:
                raise ValueError(f"window must be at least 8 scene pixels, got {self.window}")
            self.window = int(self.window)
        if not 0 <= self.overlap <= 0.5:  # more would make three windows overlap
            raise ValueError(f"overlap must be in [0, 0.5], got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.nodata_fill not in NODATA_FILLS:
            raise ValueError(f"nodata_fill must be one of {NODATA_FILLS}, got {self.nodata_fill!r}")
        colour = self.fill_colour if self.fill_colour is not None else mean_colour(None)
        self.fill_colour = np.asarray(colour, dtype=np.uint8).reshape(3, 1, 1)
        if self.output_values not in OUTPUT_VALUES:
            raise ValueError(f"output_values must be one of {OUTPUT_VALUES}, got {self.output_values!r}")
        self.bands = tuple(int(b) for b in (self.bands or (1, 2, 3)))
        if len(self.bands) != 3:
            raise ValueError(f"bands must name three bands (R, G, B), got {list(self.bands)}")
        if self.scaling is not None:
            _check_scaling(self.scaling)

    @property
    def stride(self) -> int:
        return window_stride(self.window, self.overlap)


def _check_scaling(scaling: dict) -> None:
    method = scaling.get("method")
    if method != "percentile":
        raise ValueError(f"scaling.method must be 'percentile', got {method!r}")
    low, high = scaling.get("low", 2), scaling.get("high", 98)
    if not 0 <= low < high <= 100:
        raise ValueError(f"scaling needs 0 <= low < high <= 100, got low={low} high={high}")


class ModelGeometry(Protocol):
    """What scene mapping needs to know of a model (a :class:`naic_seg.core.predict.Predictor` has it)."""

    tile_size: int | None  # the side of the tiles it was trained on
    input_size: int | None  # the side it takes
    normalization: dict | None  # its input normalisation


def model_window(window: int | None, model: ModelGeometry) -> int | None:
    """The window asked for, else the side of the tiles the model was trained on (each window is then
    resized to the model's input as its tiles were, so the model sees the scene at its training scale),
    else the model's input side."""
    return window or model.tile_size or model.input_size


def fit_to_model(options: SceneOptions, model: ModelGeometry) -> SceneOptions:
    """``options`` for mapping with ``model``: windows of :func:`model_window` scene pixels, and nodata
    painted (where it is not mirrored) in the colour that the model's normalisation maps to 0."""
    window = model_window(options.window, model)
    return dataclasses.replace(options, window=window, fill_colour=mean_colour(model.normalization))


@dataclass(frozen=True)
class SceneInfo:
    path: Path
    width: int
    height: int
    dtype: str
    label: Path | None

    @property
    def name(self) -> str:
        return self.path.stem
