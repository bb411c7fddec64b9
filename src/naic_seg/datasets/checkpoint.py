"""A versioned model checkpoint: written atomically, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, DatasetError
from kedro.io.core import Version

from naic_seg.core.checkpoint import load_checkpoint, save_checkpoint


class TorchCheckpointDataset(AbstractVersionedDataset[dict, dict]):
    """Holds the dict of :mod:`naic_seg.core.checkpoint` (state dict + what rebuilds the model).

    Loading never unpickles arbitrary objects, and a file that is not a naic-seg checkpoint is refused
    with a message naming it.
    """

    def __init__(self, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        super().__init__(PurePosixPath(filepath), version)
        self.metadata = metadata

    def load(self) -> dict:
        path = Path(self._get_load_path())
        try:
            return load_checkpoint(path)
        except FileNotFoundError as err:
            raise DatasetError(f"checkpoint '{path}' does not exist") from err

    def save(self, data: dict) -> None:
        save_checkpoint(data, Path(self._get_save_path()))

    def _exists(self) -> bool:
        try:
            return Path(self._get_load_path()).is_file()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}
