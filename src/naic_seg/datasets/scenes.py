"""Scene mapping's catalog datasets: a folder of GeoTIFF scenes in, folders of per-scene files out."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from naic_seg.core.atomic import check_writable
from naic_seg.core.scenes import label_path_for, split_scene_files
from naic_seg.core.synthetic import write_synthetic_scenes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneListing:
    """The scenes of a folder (paths only; nothing opened) and the label beside each, if any."""

    folder: str
    scenes: tuple[Path, ...]
    labels: dict[str, Path]


class SceneFolderDataset(AbstractDataset[None, SceneListing]):
    """Lists ``*.tif``/``*.tiff`` scenes in ``path`` (not recursive); ``<scene>_label.tif`` files are their
    labels; other files are left out with one warning. Nothing is opened here.

    Args:
        path: the folder. An absent folder loads as no scenes (logged), so ``kedro run`` works for projects
            that map none.
        synthetic: for the demo environment only: ``{"root": ..., **options}`` of
            :func:`naic_seg.core.synthetic.write_synthetic_scenes`, written first when ``path`` lies under it.
    """

    def __init__(self, path: str, synthetic: dict | None = None, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._synthetic = dict(synthetic) if synthetic else None
        self.metadata = metadata

    def load(self) -> SceneListing:
        if self._synthetic and self._path.resolve().is_relative_to(Path(self._synthetic["root"]).resolve()):
            write_synthetic_scenes(**self._synthetic)
        if not self._path.exists():
            log.info("No scenes folder at '%s': no scene to map", self._path)
            return SceneListing(str(self._path), (), {})
        if not self._path.is_dir():
            raise DatasetError(f"scenes folder '{self._path}' is not a folder")
        with os.scandir(self._path) as entries:
            files = [e.path for e in entries if e.is_file() and not e.name.startswith(".")]
        scenes, others = split_scene_files(files)
        if others:
            log.warning(
                "Scenes folder '%s': %d file(s) that are not scenes left out: %s",
                self._path,
                len(others),
                ", ".join(p.name for p in others),
            )
        labels = {p.stem: lab for p in scenes if (lab := label_path_for(p)) is not None}
        return SceneListing(str(self._path), tuple(scenes), labels)

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: scenes are never written")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "synthetic": self._synthetic is not None}


class SceneOutputFolderDataset(AbstractDataset[Iterable, dict]):
    """A folder of one file per scene (``<scene><suffix>``), written one at a time.

    Saving takes an iterable of ``(scene name, write)`` pairs, consumed lazily: ``write(path)`` writes one
    file atomically, so scenes are mapped while the dataset saves and a killed run leaves whole files only.
    A ``write`` of None removes the scene's file: a product switched off leaves none from an earlier run,
    so the folder (and the STAC catalog made from it) holds only what this run made. With
    ``artifact_path`` each file is logged to the active MLflow run as soon as it is written. Loading
    returns ``{scene name: path}`` of the files present.

    Args:
        exclude: suffixes of other products in the same folder that end like this one (``_confidence.tif``
            beside maps ``.tif``): files ending so are not this dataset's.
    """

    def __init__(
        self,
        path: str,
        suffix: str,
        artifact_path: str | None = None,
        exclude: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._path, self._suffix, self._artifact_path = Path(path), suffix, artifact_path
        self._exclude = tuple(exclude or ())
        self.metadata = metadata

    def save(self, data: Iterable[tuple[str, Callable[[Path], Any] | None]]) -> None:
        check_writable(self._path / f"x{self._suffix}")
        started, written, removed = time.perf_counter(), 0, 0
        for name, write in data:
            target = self._path / f"{name}{self._suffix}"
            if write is None:
                removed += target.is_file()
                target.unlink(missing_ok=True)
                continue
            write(target)
            written += 1
            if self._artifact_path is not None:
                import mlflow

                if mlflow.active_run() is not None:
                    mlflow.log_artifact(str(target), self._artifact_path)
        log.info(
            "%d file(s) written to '%s' in %.1f s%s",
            written,
            self._path,
            time.perf_counter() - started,
            f", {removed} left by an earlier run removed" if removed else "",
        )

    def load(self) -> dict[str, Path]:
        if not self._path.is_dir():
            return {}
        return {
            p.name[: -len(self._suffix)]: p
            for p in sorted(self._path.iterdir())
            if p.name.endswith(self._suffix)
            and not p.name.startswith(".")
            and not (self._exclude and p.name.endswith(self._exclude))
            and p.is_file()
        }

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {
            "path": str(self._path),
            "suffix": self._suffix,
            "artifact_path": self._artifact_path,
            "exclude": list(self._exclude),
        }
