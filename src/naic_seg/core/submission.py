"""The contest's output format: the predictions pickle and the submission zip, streamed, atomic, checked.

The prediction core (:mod:`naic_seg.core.predict`) yields uint8 class maps; this module alone knows PNG
records, 16-bit contest values and the zip layout.

The pickle is a stream of records ``(tile id, PNG bytes of the uint8 class map)`` after a header, read
back with an unpickler that refuses every class (records hold only str and bytes), so a tampered file
cannot run code. It is still an internal intermediate: do not load one from an untrusted source.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from naic_seg.core.atomic import atomic_path
from naic_seg.core.labels import ClassTable
from naic_seg.core.metrics import confusion_matrix, scores

PICKLE_FORMAT = "naic-seg-predictions/1"
TILE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def prediction_records(class_maps: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, bytes]]:
    """``(tile id, uint8 class map)`` -> the pickle's ``(tile id, PNG bytes)`` records, lazily."""
    for tile_id, class_map in class_maps:
        yield tile_id, encode_png(class_map)


class SubmissionError(ValueError):
    """A predictions file or submission zip is malformed; the message names the file and the entry."""


def entry_name(tile_id: str) -> str:
    """``results/<id>.png``; an id that could name anything outside ``results/`` is refused."""
    if not TILE_ID.fullmatch(tile_id) or ".." in tile_id:
        raise SubmissionError(
            f"tile id {tile_id!r} cannot name a submission entry (letters, digits, _ . - only)"
        )
    return f"results/{tile_id}.png"


class _NoClassesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"predictions files hold only str and bytes; refused {module}.{name}")


def write_predictions(path: str | os.PathLike, records: Iterable[tuple[str, bytes]]) -> int:
    """Stream records into ``path`` atomically; returns how many were written."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump({"format": PICKLE_FORMAT}, fh, protocol=pickle.HIGHEST_PROTOCOL)
        for tile_id, png in records:
            pickle.dump((str(tile_id), bytes(png)), fh, protocol=pickle.HIGHEST_PROTOCOL)
            count += 1
    return count


class PredictionsReader:
    """Iterates ``(tile id, PNG bytes)`` from a predictions file, one record in memory at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        with open(self.path, "rb") as fh:
            unpickler = _NoClassesUnpickler(fh)
            try:
                header = unpickler.load()
            except (pickle.UnpicklingError, EOFError) as err:
                raise SubmissionError(f"'{self.path}' is not a naic-seg predictions file: {err}") from err
            if not isinstance(header, dict) or header.get("format") != PICKLE_FORMAT:
                raise SubmissionError(f"'{self.path}' is not a naic-seg predictions file ({PICKLE_FORMAT})")
            while True:
                try:
                    record = unpickler.load()
                    unpickler.memo.clear()  # the memo would otherwise keep every record alive
                except EOFError:
                    return
                except pickle.UnpicklingError as err:
                    raise SubmissionError(f"'{self.path}' is corrupt or was tampered with: {err}") from err
                if not (isinstance(record, tuple) and len(record) == 2 and isinstance(record[1], bytes)):
                    raise SubmissionError(f"'{self.path}' holds a record that is not (id, PNG bytes)")
                yield record


def submission_entries(
    predictions: Iterable[tuple[str, bytes]], class_values: Sequence[int]
) -> Iterator[tuple[str, bytes]]:
    """uint8 class maps -> contest entries: uint16 PNG of ``values[class]`` (100..800 for NAIC)."""
    lut = np.zeros(256, dtype=np.uint16)
    lut[: len(class_values)] = class_values
    for tile_id, png in predictions:
        yield entry_name(tile_id), encode_png(lut[decode_png(png)])


def expected_entries(test_manifest: Sequence[dict]) -> dict[str, tuple[int, int]]:
    """Entry name -> (width, height) the zip must hold for each test tile: the size data_prep recorded in
    the manifest, or, for a manifest written before it recorded sizes, the image header's."""
    expected = {}
    for entry in test_manifest:
        size = entry.get("size")
        if size is None:
            with Image.open(entry["filename"]) as im:
                size = im.size
        expected[entry_name(Path(entry["filename"]).stem)] = (int(size[0]), int(size[1]))
    return expected


def write_submission(
    path: str | os.PathLike,
    entries: Iterable[tuple[str, bytes]],
    expected: dict[str, tuple[int, int]],
    class_values: Sequence[int],
) -> int:
    """Write the zip to a temporary file, check it against ``expected`` (entry -> (w, h)), then rename."""
    with atomic_path(path) as tmp:
        _write_zip(tmp, entries)
        return check_submission(tmp, expected, class_values)


def _write_zip(path: Path, entries: Iterable[tuple[str, bytes]]) -> None:
    """In a function of its own so the writer's entry table is freed before the check reads the zip."""
    seen = set()
    # PNG is already deflated: storing avoids compressing twice.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            if name in seen:
                raise SubmissionError(f"two predictions for '{name}'")
            seen.add(name)
            zf.writestr(name, data)


def check_submission(
    path: str | os.PathLike, expected: dict[str, tuple[int, int]], class_values: Sequence[int]
) -> int:
    """One entry per expected tile, each a uint16 PNG of the tile's size holding only class values."""
    valid = np.zeros(65536, dtype=bool)
    valid[list(class_values)] = True
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        if missing or extra:
            raise SubmissionError(
                f"submission {path}: {len(missing)} tile(s) missing (e.g. {missing[:3]}), "
                f"{len(extra)} unexpected entr(ies) (e.g. {extra[:3]})"
            )
        for name in names:
            with Image.open(io.BytesIO(zf.read(name))) as im:
                mode, size = im.mode, im.size
                arr = np.asarray(im)
            if mode not in ("I;16", "I;16B", "I;16L") or arr.dtype != np.uint16:
                raise SubmissionError(f"submission entry {name} is {mode}, not a 16-bit PNG")
            if size != tuple(expected[name]):
                raise SubmissionError(
                    f"submission entry {name} is {size}, its tile is {tuple(expected[name])}"
                )
            if not valid[arr].all():
                raise SubmissionError(f"submission entry {name} holds values outside {list(class_values)}")
    return len(names)


def read_submission(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """``(tile id, uint16 value map)`` for every entry of a submission zip."""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            yield Path(name).stem, decode_png(zf.read(name))


LABEL_SUFFIXES = (".png", ".tif", ".tiff")


def score_submission(
    entries: Iterable[tuple[str, np.ndarray]], label_files: Iterable[str], classes: ClassTable
) -> dict:
    """Score ``(tile id, value map)`` entries against the label files with the same ids (others are
    counted as unlabelled): mIoU, FWIoU, accuracy, per-class IoU and the confusion matrix."""
    labels = {Path(p).stem: p for p in label_files if p.lower().endswith(LABEL_SUFFIXES)}
    n = classes.num_classes
    cm = torch.zeros(n, n, dtype=torch.int64)
    scored = unlabelled = 0
    for tid, values in entries:
        if tid not in labels:
            unlabelled += 1
            continue
        with Image.open(labels[tid]) as im:
            truth = classes.to_index(np.asarray(im))
        pred = classes.to_index(values)
        if truth.shape != pred.shape:
            raise SubmissionError(
                f"prediction for '{tid}' is {pred.shape}, its label '{labels[tid]}' {truth.shape}"
            )
        cm += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), n)
        scored += 1
    return {
        "evaluated": True,
        "tiles_scored": scored,
        "tiles_without_label": unlabelled,
        **scores(cm, classes.names),
        "confusion_matrix": cm.tolist(),
    }


def scores_as_metrics(metrics: dict) -> dict[str, dict]:
    """The submission's scores as kedro-mlflow metric items (``submit.test_mIoU``, ...)."""
    if not metrics.get("evaluated"):
        return {}
    values = {f"test_{k}": metrics[k] for k in ("mIoU", "FWIoU", "pixel_accuracy")}
    values |= {f"test_IoU.{k}": v for k, v in metrics["per_class_IoU"].items() if v is not None}
    return {k: {"value": float(v), "step": 0} for k, v in values.items()}
