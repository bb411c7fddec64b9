"""Scene mapping on a Dask cluster: one task per scene, or per band of a scene above ``split_above_mpx``.

:class:`DistributedSceneMapper` gives the ``(scene, write)`` pairs that the scene maps' dataset consumes,
as the in-process path does. The first ``write`` submits every task (each writes beside its target: a scene
its map, atomically, as in-process; a band its sparse band file); each ``write`` then waits for its scene's
tasks and, for a scene in bands, joins them into the map on the client. A task out of retries fails the run
naming the scene and band; the scene has no map and its band files are removed.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

from naic_seg.core.distributed import (
    FaultHook,
    MapDistributed,
    ModelSpec,
    TaskProgress,
    absolute,
    connect,
    task_error,
    worker_predictor,
)
from naic_seg.core.labels import ClassTable
from naic_seg.core.scene_bands import Band, join_bands, map_band, merged_result, plan_bands
from naic_seg.core.scenes import SceneInfo, SceneOptions, SceneResult, map_scene

log = logging.getLogger(__name__)


def map_task(spec: ModelSpec, scene: str, target: str, options: SceneOptions, band: Band | None, label: str):
    """On a worker: map ``scene`` (or its ``band``) into ``target`` with the worker's cached predictor."""
    predictor = worker_predictor(spec)
    hook = FaultHook(label)

    def logits_fn(images):
        hook.step()
        return predictor.window_logits(images)

    classes = predictor.classes
    if band is None:
        result = map_scene(scene, target, logits_fn, classes, options)
    else:
        result = map_band(scene, target, logits_fn, classes, options, band)
    result.extra["engine"] = predictor.engine.describe()
    return result


def band_file(target: Path, band: Band) -> Path:
    """A band's file beside the map; not a ``.<map>.*.tmp`` name, which the map's atomic write clears."""
    return target.with_name(f".{target.name}-band{band.index + 1}of{band.count}.part.tif")


class DistributedSceneMapper:
    """Maps scenes on the cluster ``options.address`` names; :meth:`pairs` feeds the maps' dataset."""

    def __init__(
        self,
        infos: Sequence[SceneInfo],
        spec: ModelSpec,
        options: SceneOptions,
        distributed: MapDistributed,
    ):
        self.infos, self.spec, self.options, self.distributed = list(infos), spec, options, distributed
        self.classes = ClassTable.from_config(spec.classes)
        self.bands = {
            info.name: plan_bands(info, options, distributed.split_above_mpx) for info in self.infos
        }
        self.stack = contextlib.ExitStack()
        self.client = self.stack.enter_context(connect(distributed))  # an unreachable address fails now
        self.futures: dict[str, list] = {}
        self.targets: dict[str, Path] = {}
        self.labels: dict[str, str] = {}
        self.written: set[str] = set()
        self.engine_logged, self.closed = False, False
        split = {n: len(b) for n, b in self.bands.items() if b}
        if split:
            log.info("Scenes above %s Mpx mapped in bands: %s", distributed.split_above_mpx, split)

    def pairs(self) -> Iterator[tuple[str, partial]]:
        try:
            for info in self.infos:
                yield info.name, partial(self.write, info)
        finally:
            self.close()

    def submit_all(self, folder: Path, suffix: str) -> None:
        """Every scene's tasks, the maps to go to ``folder/<scene><suffix>``: where the dataset writes."""
        token = uuid.uuid4().hex[:8]
        megapixels = sum(i.width * i.height for i in self.infos) / 1e6
        tasks = sum(len(self.bands[i.name] or [None]) for i in self.infos)
        self.progress = TaskProgress("map_scenes", tasks, megapixels, "Mpx")
        self.started = time.perf_counter()
        for info in self.infos:
            target = folder / f"{info.name}{suffix}"
            self.targets[info.name] = target
            parts = self.bands[info.name] or [None]
            self.futures[info.name] = [self._submit(info, target, band, token) for band in parts]
        log.info(
            "map_scenes: %d task(s) for %d scene(s) (%.1f Mpx) submitted", tasks, len(self.infos), megapixels
        )

    def _submit(self, info: SceneInfo, target: Path, band: Band | None, token: str):
        label = f"scene '{info.name}'" + (f" {band.describe()}" if band else "")
        out = target if band is None else band_file(target, band)
        future = self.client.submit(
            map_task,
            self.spec,
            absolute(info.path),
            absolute(out),
            self.options,
            band,
            label,
            key=f"map-{info.name}-{band.index + 1 if band else 0}-{token}",
            retries=self.distributed.retries,
        )
        rows = info.height if band is None else band.end_row - band.first_row
        megapixels = info.width * rows / 1e6

        def done(f) -> None:
            if f.status == "finished":
                self.progress.add(megapixels, label)

        future.add_done_callback(done)
        self.labels[future.key] = label
        return future

    def write(self, info: SceneInfo, target: Path) -> SceneResult:
        target = Path(target)
        if not self.futures:
            if not target.name.startswith(info.name):
                raise ValueError(f"map target '{target}' is not named after its scene '{info.name}'")
            self.submit_all(target.parent, target.name[len(info.name) :])
        if absolute(target) != absolute(self.targets[info.name]):
            raise ValueError(
                f"scene '{info.name}': map asked at '{target}', its task writes '{self.targets[info.name]}'"
            )
        try:
            results = [self._result(future) for future in self.futures[info.name]]
            bands = self.bands[info.name]
            joined = time.perf_counter()
            if bands:
                parts = [(band, band_file(target, band)) for band in bands]
                join_bands(info.path, parts, target, self.classes, self.options)
                self._remove_band_files(info.name)
            joined = time.perf_counter() - joined
        except BaseException:
            self.close()
            raise
        self.written.add(info.name)
        result = (
            results[0] if not bands else merged_result(info.name, results, sum(r.seconds for r in results))
        )
        if bands:
            result.extra["join_s"] = joined
        self._log_engine(results[0])
        log.info(
            "%s: %d x %d mapped (%d task(s), %.1f s of worker time) -> %s",
            info.name,
            info.width,
            info.height,
            len(results),
            result.seconds,
            target,
        )
        return result

    def _result(self, future) -> SceneResult:
        try:
            return future.result()
        except Exception as err:
            raise task_error("map_scenes", self.labels[future.key], err, self.distributed.retries) from err

    def _log_engine(self, result: SceneResult) -> None:
        if not self.engine_logged:
            from naic_seg.tracking import log_params

            self.engine_logged = True
            log_params({"map_scenes.engine_used": str(result.extra.get("engine", ""))[:500]})

    def _remove_band_files(self, name: str) -> None:
        for band in self.bands[name] or []:
            band_file(self.targets[name], band).unlink(missing_ok=True)

    def close(self) -> None:
        """Cancel what still runs, close the client (and a local cluster, whose workers stop), then remove
        what the scenes not written left: band files and temporaries of killed attempts."""
        if self.closed:
            return
        self.closed = True
        if self.futures:
            self.client.cancel([f for fs in self.futures.values() for f in fs])
        self.stack.close()
        for name, target in self.targets.items():
            self._remove_band_files(name)
            if name not in self.written:
                for stray in target.parent.glob(f".{glob.escape(target.name)}*.tmp"):
                    stray.unlink(missing_ok=True)
        if self.futures:
            log.info("map_scenes: cluster closed after %.1f s", time.perf_counter() - self.started)
