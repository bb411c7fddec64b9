"""The predictions pickle and the submission zip as catalog datasets: streamed in, streamed out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from naic_seg.core.submission import PredictionsReader, read_submission, write_predictions, write_submission


class PredictionsPickleDataset(AbstractDataset):
    """Saves an iterable of ``(tile id, PNG bytes)`` record by record (atomically); loads a lazy reader.

    The file is an internal intermediate: it is read without unpickling any class, but do not load one
    from an untrusted source.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> PredictionsReader:
        if not self._filepath.is_file():
            raise FileNotFoundError(
                f"predictions file '{self._filepath}' does not exist: run submit's predict node"
            )
        return PredictionsReader(self._filepath)

    def save(self, data) -> None:
        write_predictions(self._filepath, data)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


@dataclass
class Submission:
    """What a node hands the zip dataset: entries to stream and what each must look like."""

    entries: Any  # iterable of (entry name, PNG bytes)
    expected: dict[str, tuple[int, int]]  # entry name -> (width, height) of its tile
    class_values: tuple[int, ...]


@dataclass
class SubmissionZip:
    path: Path

    def __iter__(self):
        return read_submission(self.path)


class SubmissionZipDataset(AbstractDataset):
    """Writes the contest zip atomically and checks it (entries, sizes, values) before it appears."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> SubmissionZip:
        if not self._filepath.is_file():
            raise FileNotFoundError(f"submission '{self._filepath}' does not exist")
        return SubmissionZip(self._filepath)

    def save(self, data: Submission) -> None:
        write_submission(self._filepath, data.entries, data.expected, data.class_values)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
