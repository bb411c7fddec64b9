"""A versioned model checkpoint: written atomically, read back with ``weights_only=True``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset, DatasetError
from kedro.io.core import Version

from naic_seg.core.checkpoint import load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint on disk, read only when a node asks for it (submit may not need every stage's)."""

    name: str
    path: Path | None  # None: no version has been saved yet

    def load(self) -> dict:
        if self.path is None:
            raise DatasetError(f"{self.name} has no saved version yet: run the pipeline that writes it first")
        return load_checkpoint(self.path)


class TorchCheckpointDataset(AbstractVersionedDataset[dict, CheckpointFile]):
    """Saves the dict of :mod:`naic_seg.core.checkpoint` (state dict + what rebuilds the model).

    Loading returns a :class:`CheckpointFile` pointing at the requested (default: latest) version; its
    ``load()`` never unpickles arbitrary objects and refuses a file that is not a naic-seg checkpoint.
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
