"""Nodes of map_scenes: check scenes, build the predictor submit uses, map lazily, then read the maps back."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np

from naic_seg.core.checkpoint import CheckpointFile, select_checkpoints
from naic_seg.core.distributed import MapDistributed, ModelSpec, client_predictor
from naic_seg.core.distributed_map import DistributedSceneMapper
from naic_seg.core.labels import ClassTable
from naic_seg.core.metrics import scores
from naic_seg.core.predict import PredictConfig, Predictor
from naic_seg.core.scenes import (
    SceneOptions,
    area_table,
    check_scenes,
    map_scene,
    mean_colour,
    quicklook,
    score_map,
)
from naic_seg.datasets.scenes import SceneListing
from naic_seg.tracking import log_params

log = logging.getLogger(__name__)

PREDICT_KEYS = ("tta", "tta_scales", "input_size", "batch_size", "device", "amp", "channels_last", "engine")
SCENE_KEYS = ("overlap", "batch_size", "bands", "scaling", "output_values", "nodata_fill")


def _scene_options(options: dict, window: int | None = None, fill_colour=None) -> SceneOptions:
    chosen = {k: options[k] for k in SCENE_KEYS if k in options}
    return SceneOptions(window=window, fill_colour=fill_colour, **chosen)


def map_scenes(
    scenes: SceneListing,
    stage1_checkpoint: CheckpointFile,
    stage2_checkpoint: CheckpointFile,
    classes: list[dict],
    options: dict,
) -> list:
    """Every scene is checked and the models built now, so bad input fails before any work; the maps are
    written by ``scene_maps`` one scene at a time from the returned ``(scene, write)`` pairs, in-process or,
    with ``distributed.address`` set, by tasks on a Dask cluster (the client joins bands of big scenes)."""
    distributed = MapDistributed.from_params(options.get("distributed"), "map_scenes")
    if not scenes.scenes:
        log.info("No scenes in '%s': nothing to map", scenes.folder)
        return []
    infos = check_scenes(scenes.scenes, _scene_options(options))
    table = ClassTable.from_config(classes)
    available = {"stage1": stage1_checkpoint, "stage2": stage2_checkpoint}
    checkpoints = select_checkpoints(options.get("checkpoints", ["stage2"]), available)
    cfg = PredictConfig(**{k: options[k] for k in PREDICT_KEYS if k in options})
    if distributed.in_process:
        predictor = Predictor.from_checkpoints(checkpoints, cfg, table)
        log_params({"map_scenes.engine_used": predictor.engine.describe()[:500]})
    else:  # the workers build their own (the first result logs its engine); this one checks and measures
        predictor = client_predictor(checkpoints, cfg, table)
        log_params({"map_scenes.distributed.address": distributed.address})
    # Windows of the tiles' side in scene pixels: each is resized to the model's input as its tiles were.
    window = options.get("window") or predictor.tile_size or predictor.input_size
    # Nodata painted in the colour the model's normalisation maps to 0 (where it is not mirrored).
    opts = _scene_options(options, window, mean_colour(predictor.normalization))
    log.info(
        "Mapping %d scene(s) in %d px windows (model input %s px)", len(infos), window, predictor.input_size
    )
    if not distributed.in_process:
        spec = ModelSpec.of(checkpoints, cfg, table)
        return DistributedSceneMapper(infos, spec, opts, distributed).pairs()
    write = partial(map_scene, logits_fn=predictor.window_logits, classes=table, options=opts)
    return [(info.name, partial(write, info.path)) for info in infos]


def _maps(scenes: SceneListing, scene_maps: dict[str, Path]) -> dict[str, tuple[Path, Path]]:
    missing = [p.name for p in scenes.scenes if p.stem not in scene_maps]
    if missing:
        raise FileNotFoundError(f"no map for scene(s) {missing}: run the map_scenes node first")
    return {p.stem: (p, scene_maps[p.stem]) for p in scenes.scenes}


def measure_areas(scenes: SceneListing, scene_maps: dict, classes: list[dict], options: dict) -> dict:
    """Pixels, hectares and share of each class, per scene (read back from the maps by blocks)."""
    table, values = ClassTable.from_config(classes), options.get("output_values", "index")
    return {name: area_table(m, table, values) for name, (_, m) in _maps(scenes, scene_maps).items()}


def draw_quicklooks(scenes: SceneListing, scene_maps: dict, classes: list[dict], options: dict) -> list:
    """``(scene, write)`` pairs: each quick-look is drawn when ``scene_quicklooks`` saves it."""
    table, opts = ClassTable.from_config(classes), _scene_options(options)
    return [
        (name, partial(quicklook, s, m, classes=table, options=opts))
        for name, (s, m) in _maps(scenes, scene_maps).items()
    ]


def score_maps(
    scenes: SceneListing, scene_maps: dict, classes: list[dict], options: dict
) -> tuple[dict, dict]:
    """Scores of every map with a label beside its scene, and over all of them (one confusion matrix)."""
    table, values = ClassTable.from_config(classes), options.get("output_values", "index")
    per_scene = {
        name: score_map(m, scenes.labels[name], table, values)
        for name, (_, m) in _maps(scenes, scene_maps).items()
        if name in scenes.labels
    }
    if not per_scene:
        return {"evaluated": False, "reason": f"no labels beside the scenes in {scenes.folder}"}, {}
    overall = scores(sum(np.asarray(s["confusion"]) for s in per_scene.values()), table.names)
    log.info(
        "Scene maps scored on %d labelled scene(s): mIoU %.4f FWIoU %.4f",
        len(per_scene),
        overall["mIoU"],
        overall["FWIoU"],
    )
    metrics = {f"{n}.{k}": s[k] for n, s in per_scene.items() for k in ("mIoU", "FWIoU")}
    metrics |= {k: overall[k] for k in ("mIoU", "FWIoU", "pixel_accuracy")}
    report = {"evaluated": True, "overall": overall, "scenes": per_scene}
    return report, {k: {"value": float(v), "step": 0} for k, v in metrics.items()}
