"""Every pipeline's parameter block and the options class that parses it (one per block)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from naic_seg.pipelines.data_prep.options import DataPrepOptions
from naic_seg.pipelines.map_scenes.options import MapScenesOptions
from naic_seg.pipelines.model_export.options import ModelExportOptions
from naic_seg.pipelines.submit.options import SubmitOptions
from naic_seg.pipelines.training.options import stage_options

BLOCKS: dict[str, Callable[[Any], Any]] = {
    "data_prep": partial(DataPrepOptions.from_params, where="data_prep"),
    "train_stage1": partial(stage_options, stage=1),
    "train_stage2": partial(stage_options, stage=2),
    "submit": partial(SubmitOptions.from_params, where="submit"),
    "map_scenes": partial(MapScenesOptions.from_params, where="map_scenes"),
    "model_export": partial(ModelExportOptions.from_params, where="model_export"),
}


def parse_blocks(params: Mapping, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The options of each block ``names`` lists (default: every block), parsed as its nodes parse it;
    the first bad one raises :class:`~naic_seg.core.options.OptionsError`."""
    chosen = BLOCKS if names is None else [n for n in BLOCKS if n in set(names)]
    return {name: BLOCKS[name](params.get(name)) for name in chosen}
