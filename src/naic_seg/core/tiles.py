"""Contest-format tile folders: pairing, validation, hold-out split, manifests and the dataset report.

Every check runs before anything is written, and a failure is one :class:`TileValidationError`
that lists every offending file (up to a limit) with what is wrong with it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from naic_seg.core.holdout import Fold, GroupTable, choose_holdout

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
# Modes converted to RGB on read (with a warning at data_prep); every other mode is refused.
CONVERTIBLE_IMAGE_MODES = {
    "RGBA": "alpha dropped",
    "L": "grey copied to 3 channels",
    "P": "palette",
}
LABEL_MODES = {"I;16", "I;16L", "I;16B", "I"}
PROBLEM_LIST_LIMIT = 50


class TileValidationError(ValueError):
    """One or more input files are unusable; the message lists them."""

    def __init__(self, problems: Sequence[tuple[str, str]], context: str = "input tiles"):
        self.problems = list(problems)
        shown = self.problems[:PROBLEM_LIST_LIMIT]
        lines = [f"  - {path}: {what}" for path, what in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        super().__init__(
            f"{len(self.problems)} problem(s) in the {context}; nothing was written:\n" + "\n".join(lines)
        )


def tile_id(path: str | os.PathLike) -> str:
    return Path(path).stem


def id_sort_key(tid: str) -> tuple[int, int | str]:
    """Numeric ids sort numerically (``98148`` before ``101035``), others after them by name."""
    return (0, int(tid)) if tid.isdigit() else (1, tid)


@dataclass
class FolderScan:
    """Files of one folder split into usable candidates and skipped non-image files."""

    folder: str
    files: dict[str, str] = field(default_factory=dict)  # id -> path
    skipped: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def scan_files(folder: str, paths: Iterable[str], suffixes: Sequence[str], kind: str) -> FolderScan:
    """Keep files with one of ``suffixes``; skip hidden and non-image files; flag duplicate ids."""
    scan = FolderScan(folder=folder)
    for path in paths:
        name = os.path.basename(path)
        if name.startswith(".") or not name.lower().endswith(suffixes):
            scan.skipped.append(path)
            continue
        tid = tile_id(path)
        if tid in scan.files:
            scan.problems.append((path, f"two {kind} files share the id '{tid}' ({scan.files[tid]})"))
            continue
        scan.files[tid] = path
    return scan


def pair_by_id(images: FolderScan, labels: FolderScan) -> tuple[list[tuple[str, str]], list]:
    """Pair images and labels by base name; return the sorted pairs and the mismatches."""
    problems = []
    for tid in sorted(images.files.keys() - labels.files.keys(), key=id_sort_key):
        problems.append((images.files[tid], f"image without label (no '{tid}.*' in {labels.folder})"))
    for tid in sorted(labels.files.keys() - images.files.keys(), key=id_sort_key):
        problems.append((labels.files[tid], f"label without image (no '{tid}.*' in {images.folder})"))
    common = sorted(images.files.keys() & labels.files.keys(), key=id_sort_key)
    return [(images.files[t], labels.files[t]) for t in common], problems


@dataclass(frozen=True)
class InspectOptions:
    label_values: tuple[int, ...]  # class values, in class-index order
    ignore_values: tuple[int, ...] = (0,)


def _tiff_data_end(im: Image.Image) -> int | None:
    """End offset of a TIFF's last strip or tile, from its header (None for other formats)."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    offsets = tags.get(273) or tags.get(324)  # StripOffsets or TileOffsets
    counts = tags.get(279) or tags.get(325)  # StripByteCounts or TileByteCounts
    if not offsets or not counts:
        return None
    return max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))


def inspect_image(path: str) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """Check one image; returns (size, problem, conversion-note).

    A TIFF is checked from its header: mode, size, and that every strip or tile its header names lies
    inside the file (what a truncated copy fails). Other formats are decoded in full. Fully decoding
    every TIFF would double data_prep's time at contest scale; corrupt compressed data inside a complete
    file is reported, naming the file, when training first reads the tile.
    """
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            data_end = _tiff_data_end(im)
            if data_end is None:
                im.load()
            elif data_end > os.path.getsize(path):
                return (
                    size,
                    (
                        f"truncated image: its header places data up to byte {data_end} "
                        f"but the file has {os.path.getsize(path)} bytes"
                    ),
                    None,
                )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return None, f"unreadable or truncated image ({type(err).__name__}: {err})", None
    if mode == "RGB":
        return size, None, None
    if mode in CONVERTIBLE_IMAGE_MODES:
        return size, None, f"{mode} image converted to RGB ({CONVERTIBLE_IMAGE_MODES[mode]})"
    return (
        size,
        (f"image mode {mode} is not 3-channel 8-bit RGB (accepted: RGB; RGBA, L and P are converted)"),
        None,
    )


def inspect_label(path: str, value_lut: np.ndarray, n_classes: int):
    """Returns (size, per-class pixel counts incl. ignore as the last entry, problem)."""
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            if mode not in LABEL_MODES:
                if len(im.getbands()) != 1:
                    return (
                        size,
                        None,
                        f"label is not single-channel (mode {mode}, {len(im.getbands())} bands)",
                    )
                return (
                    size,
                    None,
                    (
                        f"label mode {mode} is not 16-bit grayscale (contest labels are 16-bit PNG, "
                        "values 100..800)"
                    ),
                )
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return None, None, f"unreadable or truncated label ({type(err).__name__}: {err})"
    if arr.dtype != np.uint16:
        if arr.min() < 0 or arr.max() > 65535:
            return size, None, f"label values outside 0..65535 (min {arr.min()}, max {arr.max()})"
        arr = arr.astype(np.uint16)
    # Count distinct values first (a few per tile), then map them: ~6x faster than mapping every pixel.
    values, value_counts = np.unique(arr, return_counts=True)
    value_index = value_lut[values]
    counts = np.zeros(n_classes + 2, dtype=np.int64)
    np.add.at(counts, value_index, value_counts)
    if counts[n_classes + 1]:
        bad = values[value_index == n_classes + 1]
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        return (
            size,
            None,
            (f"label values outside the valid set: {shown} ({int(counts[n_classes + 1])} pixels)"),
        )
    return size, counts[: n_classes + 1].astype(np.int64), None


def _value_lut(opts: InspectOptions) -> np.ndarray:
    """uint16 value -> class index; ignore values -> n; anything else -> n + 1 (invalid)."""
    n = len(opts.label_values)
    lut = np.full(65536, n + 1, dtype=np.uint8)
    lut[list(opts.ignore_values)] = n
    lut[list(opts.label_values)] = np.arange(n, dtype=np.uint8)
    return lut


def _inspect_pairs_chunk(chunk: list[tuple[str, str | None]], opts: InspectOptions) -> list:
    lut = _value_lut(opts)
    n = len(opts.label_values)
    out = []
    for image, label in chunk:
        size, img_problem, note = inspect_image(image)
        lab = (None, None, None) if label is None else inspect_label(label, lut, n)
        lab_size, counts, lab_problem = lab
        problems = []
        if img_problem:
            problems.append((image, img_problem))
        if lab_problem:
            problems.append((label, lab_problem))
        if label is not None and size and lab_size and size != lab_size:
            problems.append(
                (
                    label,
                    f"label size {lab_size[0]}x{lab_size[1]} differs from its image's "
                    f"{size[0]}x{size[1]} ({image})",
                )
            )
        out.append((size, counts, note, problems))
    return out


def inspect_pairs(pairs: Sequence[tuple[str, str | None]], opts: InspectOptions, workers: int = 0):
    """Inspect (image, label-or-None) pairs in ``workers`` processes, in order.

    Work goes out in chunks, so memory holds only per-tile sizes and class counts.
    """
    chunk_size = 256
    chunks = [list(pairs[i : i + chunk_size]) for i in range(0, len(pairs), chunk_size)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield from _inspect_pairs_chunk(chunk, opts)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(_inspect_pairs_chunk, chunks, [opts] * len(chunks)):
            yield from result


@dataclass
class PreparedData:
    train_manifest: list[dict]
    val_manifest: list[dict]
    test_manifest: list[dict]
    report: dict


@dataclass
class _Inputs:
    """The scanned folders: train pairs, test images, skipped files and the problems found so far."""

    pairs: list[tuple[str, str]]
    test_pairs: list[tuple[str, None]]
    skipped: list[str]
    problems: list[tuple[str, str]]


@dataclass
class _Inspection:
    class_counts: np.ndarray  # train tiles x (classes + ignore)
    sizes: dict[str, Counter]
    notes: list[str]
    test_sizes: list  # (width, height) of each test tile: the submission's entries must match them


def _scan_inputs(train_images: TileListing, train_labels: TileListing, test_images: TileListing) -> _Inputs:
    scans = {
        "train images": scan_files(train_images.folder, train_images.files, IMAGE_SUFFIXES, "image"),
        "train labels": scan_files(train_labels.folder, train_labels.files, LABEL_SUFFIXES, "label"),
        "test images": scan_files(test_images.folder, test_images.files, IMAGE_SUFFIXES, "image"),
    }
    problems = [p for scan in scans.values() for p in scan.problems]
    for what, scan in scans.items():
        if not scan.files:
            problems.append((scan.folder, f"no {what} found (empty folder or no {what.split()[-1]} files)"))
    skipped = [p for scan in scans.values() for p in scan.skipped]
    if skipped:
        log.warning("Skipped %d non-image file(s), e.g. %s", len(skipped), ", ".join(skipped[:5]))
    pairs, pair_problems = pair_by_id(scans["train images"], scans["train labels"])
    test_files = scans["test images"].files
    test_pairs = [(test_files[t], None) for t in sorted(test_files, key=id_sort_key)]
    return _Inputs(pairs, test_pairs, skipped, problems + pair_problems)


def _tile_groups(table: GroupTable | None, pairs: Sequence[tuple[str, str]]) -> tuple[list | None, list]:
    """Each train tile's group from ``table`` (None without one), and the problems: the table's own and
    every tile it does not name."""
    if table is None:
        return None, []
    groups, problems = table.read()
    if problems:
        return None, problems
    unknown = [image for image, _ in pairs if tile_id(image) not in groups]
    problems = [(image, f"tile id not in the hold-out group table {table.csv}") for image in unknown]
    return [groups.get(tile_id(image)) for image, _ in pairs], problems


def _inspect(inputs: _Inputs, opts: InspectOptions, workers: int) -> _Inspection:
    pairs, everything = inputs.pairs, inputs.pairs + inputs.test_pairs
    found = _Inspection(
        np.zeros((len(pairs), len(opts.label_values) + 1), dtype=np.int64),
        {"train": Counter(), "test": Counter()},
        [],
        [],
    )
    for i, (size, counts, note, tile_problems) in enumerate(inspect_pairs(everything, opts, workers)):
        inputs.problems += tile_problems
        split = "train" if i < len(pairs) else "test"
        if size:
            found.sizes[split][f"{size[0]}x{size[1]}"] += 1
        if split == "test":
            found.test_sizes.append(size)
        if note:
            found.notes.append(everything[i][0] + ": " + note)
        if counts is not None:
            found.class_counts[i] = counts
    return found


def prepare(
    train_images: TileListing,
    train_labels: TileListing,
    test_images: TileListing,
    label_values: Sequence[int],
    class_names: Sequence[str],
    ignore_values: Sequence[int] = (0,),
    holdout: float | int = 0.05,
    seed: int = 1996,
    workers: int | None = None,
    groups: GroupTable | None = None,
    fold: Fold | None = None,
) -> PreparedData:
    """Validate the raw tiles, split a seeded hold-out, and build manifests and report.

    ``groups`` (a tile id -> group table) makes the hold-out whole groups; ``fold`` makes it fold
    ``fold.index`` of ``fold.k`` folds (of groups, or of tiles without ``groups``), ``holdout`` unused.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    opts = InspectOptions(tuple(int(v) for v in label_values), tuple(int(v) for v in ignore_values))
    inputs = _scan_inputs(train_images, train_labels, test_images)
    tile_groups, group_problems = _tile_groups(groups, inputs.pairs)
    if group_problems:  # a wrong table or parameter: say so before the long inspection
        raise TileValidationError(inputs.problems + group_problems)
    found = _inspect(inputs, opts, workers)
    if inputs.problems:
        raise TileValidationError(inputs.problems)
    if found.notes:
        log.warning("%d image(s) converted on read: %s", len(found.notes), "; ".join(found.notes[:5]))

    val_mask = choose_holdout(found.class_counts[:, :-1], holdout, seed, tile_groups, fold)
    entries = [{"filename": img, "ann": {"seg_map": lab}} for img, lab in inputs.pairs]
    test = [
        {"filename": img, "size": list(size)}
        for (img, _), size in zip(inputs.test_pairs, found.test_sizes, strict=True)
    ]
    report = build_report(
        found.class_counts,
        val_mask,
        class_names,
        label_values,
        found.sizes,
        len(test),
        len(inputs.skipped),
        found.notes,
    )
    report["holdout"] = holdout_report(holdout, seed, groups, fold, tile_groups, val_mask, report)
    train = [e for e, v in zip(entries, val_mask, strict=True) if not v]
    val = [e for e, v in zip(entries, val_mask, strict=True) if v]
    return PreparedData(train, val, test, report)


def holdout_report(holdout, seed, groups, fold, tile_groups, val_mask, report) -> dict:
    """How the hold-out was drawn; for groups, which were held out; classes the hold-out lacks."""
    info = {"size": holdout, "seed": seed, "kind": "random" if groups is None else "grouped"}
    info["fold"] = None if fold is None else {"k": fold.k, "index": fold.index}
    if groups is not None:
        held = sorted({g for g, v in zip(tile_groups, val_mask, strict=True) if v})
        kept = {g for g, v in zip(tile_groups, val_mask, strict=True) if not v}
        info.update(table=groups.describe(), groups={"train": len(kept), "val": len(held)}, held_out=held)
    train, val = report["train_pixels"]["classes"], report["val_pixels"]["classes"]
    info["classes_without_val_pixels"] = [
        t["name"] for t, v in zip(train, val, strict=True) if t["pixels"] and not v["pixels"]
    ]
    if info["classes_without_val_pixels"]:
        log.warning(
            "The hold-out holds no pixel of %s: its scores leave these classes out",
            ", ".join(info["classes_without_val_pixels"]),
        )
    return info


def build_report(class_counts, val_mask, class_names, label_values, sizes, n_test, n_skipped, notes) -> dict:
    def pixel_stats(counts: np.ndarray) -> dict:
        total = counts.sum(axis=0)
        labelled = int(total[:-1].sum())
        return {
            "pixels": int(total.sum()),
            "ignored_pixels": int(total[-1]),
            "classes": [
                {
                    "index": i,
                    "value": int(v),
                    "name": n,
                    "pixels": int(total[i]),
                    "frequency": (float(total[i]) / labelled) if labelled else 0.0,
                }
                for i, (v, n) in enumerate(zip(label_values, class_names, strict=True))
            ],
        }

    return {
        "counts": {"train": int((~val_mask).sum()), "val": int(val_mask.sum()), "test": n_test},
        "image_sizes": {split: dict(c) for split, c in sizes.items()},
        "skipped_non_image_files": n_skipped,
        "converted_images": len(notes),
        "train_pixels": pixel_stats(class_counts[~val_mask]),
        "val_pixels": pixel_stats(class_counts[val_mask]),
    }


@dataclass(frozen=True)
class TileListing:
    """The files of one raw folder, as a catalog dataset hands them to a node."""

    folder: str
    files: tuple[str, ...]
