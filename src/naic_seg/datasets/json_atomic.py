"""JSON written atomically: a killed run leaves the previous file intact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from naic_seg.core.atomic import write_json


class AtomicJSONDataset(AbstractDataset[Any, Any]):
    def __init__(self, filepath: str, indent: int | None = 1, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._indent = indent
        self.metadata = metadata

    def load(self) -> Any:
        try:
            with open(self._filepath, encoding="utf-8") as fh:
                return json.load(fh)
        except json.JSONDecodeError as err:
            raise DatasetError(f"'{self._filepath}' is not valid JSON: {err}") from err

    def save(self, data: Any) -> None:
        write_json(self._filepath, data, indent=self._indent)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
