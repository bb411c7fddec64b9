"""A self-contained STAC catalog (a Collection and its Items) in a folder, written atomically file by file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from naic_seg.core.atomic import check_writable
from naic_seg.core.gis.stac import COLLECTION_FILE, save_catalog

log = logging.getLogger(__name__)


class StacCatalogDataset(AbstractDataset[Any, Any]):
    """Saves a ``pystac.Collection`` as ``<path>/collection.json`` and one ``<item>.stac.json`` per Item
    (nothing for a Collection without Items), every href relative (see
    :func:`naic_seg.core.gis.stac.save_catalog`); with ``artifact_path`` each JSON file is also logged to the
    active MLflow run. Loads the Collection (its
    Items through ``get_items()``), or None when none was saved."""

    def __init__(self, path: str, artifact_path: str | None = None, metadata: dict[str, Any] | None = None):
        self._path, self._artifact_path = Path(path), artifact_path
        self.metadata = metadata

    def save(self, data) -> None:
        if not any(True for _ in data.get_items()):
            log.info("No scene mapped: no STAC catalog written")
            return
        check_writable(self._path / COLLECTION_FILE)
        written = save_catalog(data, self._path)
        if self._artifact_path is not None:
            import mlflow

            if mlflow.active_run() is not None:
                for path in written:
                    mlflow.log_artifact(str(path), self._artifact_path)
        log.info("STAC catalog of %d item(s) written to '%s'", len(written) - 1, self._path / COLLECTION_FILE)

    def load(self):
        import pystac

        path = self._path / COLLECTION_FILE
        return pystac.Collection.from_file(str(path)) if path.is_file() else None

    def _exists(self) -> bool:
        return (self._path / COLLECTION_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "artifact_path": self._artifact_path}
