"""``map_scenes``'s parameter block, typed (its values: ``conf/base/parameters_map_scenes.yml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from naic_seg.core.distributed import MapDistributed
from naic_seg.core.engines import ENGINES
from naic_seg.core.gis.vector import VectorOptions
from naic_seg.core.options import Options
from naic_seg.core.predict import TTA_MODES, PredictConfig
from naic_seg.core.runtime import AMP_CHOICES
from naic_seg.core.scenes import NODATA_FILLS, OUTPUT_VALUES, SceneOptions
from naic_seg.pipelines.submit.options import check_prediction_keys


@dataclass(frozen=True)
class MapScenesOptions(Options):
    checkpoints: str | list[str]  # stage1 | stage2 | checkpoint file paths (several: an ensemble)
    tta: Literal[TTA_MODES]
    tta_scales: list[float]
    window: int | None  # scene pixels; None: the side of the checkpoint's training tiles
    overlap: float
    batch_size: int
    bands: list[int] | None
    scaling: dict | None
    nodata_fill: Literal[NODATA_FILLS]
    output_values: Literal[OUTPUT_VALUES]
    device: str
    amp: Literal[AMP_CHOICES]
    channels_last: bool | Literal["auto"]
    engine: Literal[ENGINES]
    confidence: bool
    vector: VectorOptions | None
    distributed: MapDistributed

    def check(self) -> None:
        check_prediction_keys(self)
        self.scene_options(self.window)  # SceneOptions' own checks: window, overlap, bands, scaling
        self.predict_config()
        if self.confidence and not self.distributed.in_process:
            raise ValueError(
                "confidence is made in-process only: the band tasks of a Dask cluster write no "
                "confidence yet; set map_scenes.distributed.address=null or map_scenes.confidence=false"
            )

    def predict_config(self) -> PredictConfig:
        keys = ("tta", "tta_scales", "batch_size", "device", "amp", "channels_last", "engine")
        return PredictConfig(**{k: getattr(self, k) for k in keys})

    def scene_options(self, window: int | None = None, fill_colour=None) -> SceneOptions:
        """How scenes are cut (``window`` in scene pixels, resolved from the model when null) and mapped."""
        keys = ("overlap", "batch_size", "bands", "scaling", "output_values", "nodata_fill")
        return SceneOptions(window=window, fill_colour=fill_colour, **{k: getattr(self, k) for k in keys})
