"""A versioned model checkpoint: written atomically, read back with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, DatasetError
from kedro.io.core import Version

from naic_seg.core.checkpoint import CheckpointFile, save_checkpoint


class TorchCheckpointDataset(AbstractVersionedDataset[dict, CheckpointFile]):
    """Saves the dict of :mod:`naic_seg.core.checkpoint` (state dict + what rebuilds the model).

    Loading returns a :class:`~naic_seg.core.checkpoint.CheckpointFile` pointing at the requested (default:
    latest) version; nodes open it with ``open_checkpoint``, which never unpickles arbitrary objects and
    refuses a file that is not a naic-seg checkpoint.
    """

    def __init__(self, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None):
        super().__init__(PurePosixPath(filepath), version)
        self.metadata = metadata

    def load(self) -> CheckpointFile:
        name = Path(str(self._filepath)).stem
        try:
            path = Path(self._get_load_path())
        except DatasetError:  # VersionNotFoundError: nothing saved yet
            return CheckpointFile(name, None)
        return CheckpointFile(name, path if path.is_file() else None)

    def save(self, data: dict) -> None:
        save_checkpoint(data, Path(self._get_save_path()))

    def _exists(self) -> bool:
        try:
            return Path(self._get_load_path()).is_file()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}
