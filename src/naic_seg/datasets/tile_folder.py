"""A raw folder of tiles as a catalog dataset: loading lists its files; nothing is decoded here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from naic_seg.core.synthetic import write_synthetic_tiles
from naic_seg.core.tiles import TileListing


class TileFolderDataset(AbstractDataset[None, TileListing]):
    """Lists the files of ``path`` (not recursive), sorted by name.

    Args:
        path: the folder.
        missing_ok: an absent folder loads as an empty listing instead of failing
            (for optional inputs such as test labels).
        synthetic: for the demo environment only. ``{"root": ..., **generator options}``: when ``path``
            lies under ``root`` and that tree has not been generated yet, the seeded synthetic tiles of
            :func:`naic_seg.core.synthetic.write_synthetic_tiles` are written there first.
    """

    def __init__(
        self,
        path: str,
        missing_ok: bool = False,
        synthetic: dict | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._path = Path(path)
        self._missing_ok = missing_ok
        self._synthetic = dict(synthetic) if synthetic else None
        self.metadata = metadata

    def _synthetic_root(self) -> Path | None:
        if not self._synthetic:
            return None
        root = Path(self._synthetic["root"])
        return root if self._path.resolve().is_relative_to(root.resolve()) else None

    def load(self) -> TileListing:
        root = self._synthetic_root()
        if root is not None:
            options = {k: v for k, v in self._synthetic.items() if k != "root"}
            write_synthetic_tiles(root, **options)
        if not self._path.is_dir():
            if self._missing_ok and not self._path.exists():
                return TileListing(str(self._path), ())
            raise DatasetError(f"tile folder '{self._path}' does not exist or is not a folder")
        with os.scandir(self._path) as entries:
            files = sorted(e.path for e in entries if e.is_file())
        return TileListing(str(self._path), tuple(files))

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: raw tiles are never written")

    def _exists(self) -> bool:
        return self._path.is_dir() or self._synthetic_root() is not None

    def _describe(self) -> dict[str, Any]:
        return {
            "path": str(self._path),
            "missing_ok": self._missing_ok,
            "synthetic": self._synthetic is not None,
        }
