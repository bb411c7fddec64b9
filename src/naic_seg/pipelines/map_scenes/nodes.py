"""Nodes of map_scenes: check scenes, build the predictor submit uses, map lazily, then read the maps back
and make the GIS products (styles, polygons, adjusted areas, STAC) from them."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from functools import partial
from pathlib import Path

import numpy as np

from naic_seg.core.atomic import move_into_place
from naic_seg.core.checkpoint import CheckpointFile, select_checkpoints
from naic_seg.core.distributed import ModelSpec, client_predictor
from naic_seg.core.distributed_map import DistributedSceneMapper
from naic_seg.core.gis.area_estimate import adjusted_areas
from naic_seg.core.gis.stac import Provenance, SceneProducts, run_collection, scene_item
from naic_seg.core.gis.style import write_category_names, write_confidence_style, write_qgis_style
from naic_seg.core.gis.vector import check_vector_scenes, vectorise_map
from naic_seg.core.labels import ClassTable
from naic_seg.core.metrics import scores
from naic_seg.core.predict import Predictor
from naic_seg.core.scenes import (
    SceneOptions,
    area_table,
    check_scenes,
    fit_to_model,
    map_scene,
    quicklook,
    score_map,
)
from naic_seg.datasets.scenes import SceneListing
from naic_seg.pipelines.map_scenes.options import MapScenesOptions
from naic_seg.tracking import active_run_id, log_params, registered_versions

log = logging.getLogger(__name__)


def _options(options: dict) -> MapScenesOptions:
    return MapScenesOptions.from_params(options, "map_scenes")


def map_scenes(
    scenes: SceneListing,
    stage1_checkpoint: CheckpointFile,
    stage2_checkpoint: CheckpointFile,
    classes: list[dict],
    options: dict,
) -> tuple[list, list, dict]:
    """Every scene is checked and the models built now, so bad input fails before any work; the maps are
    written by ``scene_maps`` one scene at a time from the returned ``(scene, write)`` pairs, in-process or,
    with ``distributed.address`` set, by tasks on a Dask cluster (the client joins bands of big scenes).
    With ``confidence`` on (in-process only) each map's confidence COG is made with it, then moved into
    ``scene_confidence`` when that saves. Also returns what the model was (``scene_map_model``)."""
    opts = _options(options)
    confidence, vector, distributed = opts.confidence, opts.vector, opts.distributed
    if not scenes.scenes:
        log.info("No scenes in '%s': nothing to map", scenes.folder)
        return [], [], {"checkpoints": []}
    infos = check_scenes(scenes.scenes, opts.scene_options())
    if vector is not None:
        check_vector_scenes(scenes.scenes, vector)
    table = ClassTable.from_config(classes)
    available = {"stage1": stage1_checkpoint, "stage2": stage2_checkpoint}
    checkpoints = select_checkpoints(opts.checkpoints, available)
    cfg = opts.predict_config()
    if distributed.in_process:
        predictor = Predictor.from_checkpoints(checkpoints, cfg, table)
        log_params({"map_scenes.engine_used": predictor.engine.describe()[:500]})
    else:  # the workers build their own (the first result logs its engine); this one checks and measures
        predictor = client_predictor(checkpoints, cfg, table)
        log_params({"map_scenes.distributed.address": distributed.address})
    scene_opts = fit_to_model(opts.scene_options(opts.window), predictor)
    window = scene_opts.window
    log.info(
        "Mapping %d scene(s) in %d px windows (model input %s px)", len(infos), window, predictor.input_size
    )
    model = {"checkpoints": [_describe(c) for c in checkpoints], "window": window}
    if not distributed.in_process:
        spec = ModelSpec.of(checkpoints, cfg, table)
        maps = DistributedSceneMapper(infos, spec, scene_opts, distributed).pairs()
        return maps, [(info.name, None) for info in infos], model
    return (*_in_process_maps(infos, predictor, table, scene_opts, confidence), model)


def _in_process_maps(infos, predictor: Predictor, table: ClassTable, opts: SceneOptions, confidence: bool):
    """``(scene, write)`` pairs for the maps and ``(scene, place | None)`` pairs for their confidences."""
    hand_off = _ConfidenceHandOff([info.name for info in infos])

    def write(info, target: Path) -> None:
        # A fixed name that the map's own atomic write clears if a killed run left it.
        conf = target.with_name(f".{target.name}.confidence.tmp") if confidence else None
        with hand_off.making(info.name):
            map_scene(info.path, target, predictor.window_logits, table, opts, conf)
            hand_off.made(info.name, conf)

    maps = [(info.name, partial(write, info)) for info in infos]
    confidences = [(info.name, partial(hand_off.place, info.name) if confidence else None) for info in infos]
    return maps, confidences


class _ConfidenceHandOff:
    """Hands each confidence COG, made with its map while ``scene_maps`` saves, to ``scene_confidence``.

    Kedro saves a node's outputs one after the other (``scene_maps`` first), or at once in threads with
    ``--async``: placing a scene's confidence waits until its map is done, and a failed map releases every
    waiter. (With ``--async``, a ``scene_maps`` save that failed before its first scene would leave the
    confidence save waiting; both live in one folder, whose write check then fails for both alike.)"""

    def __init__(self, names: list[str]):
        self.ready = {name: threading.Event() for name in names}
        self.staged: dict[str, Path] = {}

    @contextlib.contextmanager
    def making(self, name: str):
        try:
            yield
        except BaseException:
            for event in self.ready.values():  # no more maps will come: let a waiting placer fail now
                event.set()
            raise
        finally:
            self.ready[name].set()

    def made(self, name: str, confidence: Path | None) -> None:
        if confidence is not None:
            self.staged[name] = confidence

    def place(self, name: str, target: Path) -> None:
        self.ready[name].wait()
        if name not in self.staged:
            raise RuntimeError(f"scene '{name}' has no map, so no confidence to save")
        move_into_place(self.staged.pop(name), target)


def _describe(checkpoint: dict) -> dict:
    return {k: checkpoint.get(k) for k in ("stage", "iteration", "source", "mlflow_run_id")}


def _maps(scenes: SceneListing, scene_maps: dict[str, Path]) -> dict[str, tuple[Path, Path]]:
    missing = [p.name for p in scenes.scenes if p.stem not in scene_maps]
    if missing:
        raise FileNotFoundError(f"no map for scene(s) {missing}: run the map_scenes node first")
    return {p.stem: (p, scene_maps[p.stem]) for p in scenes.scenes}


def measure_areas(scenes: SceneListing, scene_maps: dict, classes: list[dict], options: dict) -> dict:
    """Pixels, hectares and share of each class, per scene (read back from the maps by blocks)."""
    values = _options(options).output_values
    table = ClassTable.from_config(classes)
    return {name: area_table(m, table, values) for name, (_, m) in _maps(scenes, scene_maps).items()}


def draw_quicklooks(scenes: SceneListing, scene_maps: dict, classes: list[dict], options: dict) -> list:
    """``(scene, write)`` pairs: each quick-look is drawn when ``scene_quicklooks`` saves it."""
    opts = _options(options).scene_options()
    table = ClassTable.from_config(classes)
    return [
        (name, partial(quicklook, s, m, classes=table, options=opts))
        for name, (s, m) in _maps(scenes, scene_maps).items()
    ]


def score_maps(
    scenes: SceneListing, scene_maps: dict, classes: list[dict], options: dict
) -> tuple[dict, dict]:
    """Scores of every map with a label beside its scene, and over all of them (one confusion matrix)."""
    values = _options(options).output_values
    table = ClassTable.from_config(classes)
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


def style_maps(scenes: SceneListing, scene_maps: dict, classes: list[dict], options: dict) -> tuple:
    """``(scene, write)`` pairs of the QGIS styles, GDAL category names and confidence styles (None: off)."""
    opts = _options(options)
    table, values = ClassTable.from_config(classes), opts.output_values
    names = list(_maps(scenes, scene_maps))
    styles = [(n, partial(write_qgis_style, classes=table, output_values=values)) for n in names]
    categories = [(n, partial(write_category_names, classes=table, output_values=values)) for n in names]
    ramp = partial(write_confidence_style, num_classes=table.num_classes) if opts.confidence else None
    return styles, categories, [(n, ramp) for n in names]


def vectorise_maps(scenes: SceneListing, scene_maps: dict, classes: list[dict], options: dict) -> list:
    """``(scene, write)`` pairs of each map's polygons (GeoPackage), or of None when ``vector`` is off."""
    opts = _options(options)
    vector, values = opts.vector, opts.output_values
    table = ClassTable.from_config(classes)

    def polygons(map_path: Path):
        if vector is None:
            return None
        return partial(vectorise_map, map_path, classes=table, output_values=values, options=vector)

    return [(name, polygons(m)) for name, (_, m) in _maps(scenes, scene_maps).items()]


def estimate_areas(scene_areas: dict, scene_scores: dict, classes: list[dict]) -> tuple[dict, dict]:
    """Error-adjusted class areas over every mapped scene, from the confusion matrix of the labelled ones."""
    names = ClassTable.from_config(classes).names
    if not scene_scores.get("evaluated"):
        return {"estimated": False, "reason": "no labelled scene was scored"}, {}
    metric = all(a["pixel_area_m2"] is not None for a in scene_areas.values())
    unit = "hectares" if metric else "pixels"  # a scene without metric pixels: the region in pixels
    mapped = np.sum([[row[unit] for row in a["classes"]] for a in scene_areas.values()], axis=0)
    confusion = np.sum([s["confusion"] for s in scene_scores["scenes"].values()], axis=0)
    result = adjusted_areas(confusion, mapped, names, unit)
    result["region"] = sorted(scene_areas)
    result["labelled_scenes"] = sorted(scene_scores["scenes"])
    result["applies_when"] = (
        "the labelled pixels are a representative sample of the mapped region (labelled scenes drawn at "
        "random from it); neighbouring pixels are correlated, so the intervals are optimistic"
    )
    if not result["estimated"]:
        log.warning("No adjusted areas: %s", result["reason"])
        return result, {}
    short = {"hectares": "ha", "pixels": "px"}[unit]
    metrics = {
        f"{row['name']}.{what}_{short}": row[f"{what}_{unit}"]
        for row in result["classes"]
        for what in ("mapped", "adjusted", "ci95")
    }
    return result, {k: {"value": float(v), "step": 0} for k, v in metrics.items()}


def catalog_scenes(
    scenes: SceneListing,
    scene_maps: dict,
    scene_areas: dict,
    scene_map_model: dict,
    classes: list[dict],
    options: dict,
    **products: dict,
):
    """A STAC Item per mapped scene (assets: every product file present for it) and the run's Collection."""
    values = _options(options).output_values
    maps = _maps(scenes, scene_maps)
    table = ClassTable.from_config(classes)
    model_runs = sorted(
        {c["mlflow_run_id"] for c in scene_map_model["checkpoints"] if c.get("mlflow_run_id")}
    )
    provenance = Provenance.from_dict(
        {"run_id": active_run_id(), "registered_models": registered_versions(model_runs)}
    )
    items = []
    for name, (scene, map_path) in maps.items():
        files = {"map": map_path} | {k: p[name] for k, p in products.items() if name in p}
        mapped_at = dt.datetime.fromtimestamp(map_path.stat().st_mtime, dt.timezone.utc)
        item = scene_item(
            SceneProducts(name, scene, files), table, values, mapped_at, provenance, scene_areas.get(name)
        )
        items.append(item)
    stages = ", ".join(f"{c['stage']} @ {c['iteration']}" for c in scene_map_model["checkpoints"])
    description = f"Land-cover maps of {len(items)} scene(s) made by naic-seg with checkpoint(s) {stages}"
    return run_collection(items, provenance, description)
