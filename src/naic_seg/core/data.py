"""Reading manifest tiles for training, evaluation and prediction.

Workers decode and resize; they hand uint8 images to the main process, which normalises on the
device (a quarter of the bytes to move, and the arithmetic runs where the model runs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from naic_seg.core.augment import check_augment, flip, photometric, rescale_crop
from naic_seg.core.labels import ClassTable


class TileReadError(OSError):
    """A tile named by a manifest cannot be read; the message names the file."""


def read_image(path: str) -> np.ndarray:
    """HxWx3 uint8. RGBA, grey and palette images are converted to RGB (data_prep warned about them)."""
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except FileNotFoundError as err:
        raise TileReadError(f"image '{path}' named by the manifest does not exist") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise TileReadError(f"cannot read image '{path}': {type(err).__name__}: {err}") from err


def read_label(path: str) -> np.ndarray:
    """HxW stored label values (uint16)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError as err:
        raise TileReadError(f"label '{path}' named by the manifest does not exist") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise TileReadError(f"cannot read label '{path}': {type(err).__name__}: {err}") from err
    if arr.ndim != 2:
        raise TileReadError(f"label '{path}' is not single-channel (shape {arr.shape})")
    return arr.astype(np.uint16, copy=False)


def resize_image(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_index_map(index: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or index.shape[:2] == (size, size):
        return index
    return np.asarray(Image.fromarray(index).resize((size, size), Image.NEAREST))


class ManifestDataset(torch.utils.data.Dataset):
    """Tiles of a manifest as ``{"image": uint8 3xSxS, "label": int64 SxS, "index": i}``.

    Args:
        manifest: entries ``{"filename": ..., "ann": {"seg_map": ...}}`` (``ann`` optional).
        classes: maps stored values to indices; anything else becomes 255 (ignore).
        size: square input size (bilinear image, nearest label), or None to keep each tile's size.
        label_size: "input" resizes labels with the image (training); "original" keeps the tile's own
            label (evaluation at the original size); None loads no label (prediction).
        augment: ``{"hflip": bool, "vflip": bool, "photometric": {...}, "scale": [low, high]}`` (see
            :mod:`naic_seg.core.augment`; photometric and scale need labels, so training only); drawn from
            ``seed`` and the sample's position in the stream, so a run is reproducible whatever the number
            of workers, and resumable.
        keep_above: tiles with a side above this are not resized (prediction slides windows over them).
    """

    def __init__(
        self,
        manifest: Sequence[dict],
        classes: ClassTable,
        size: int | None,
        label_size: str | None = "input",
        augment: dict | None = None,
        seed: int = 0,
        keep_above: int | None = None,
    ):
        if label_size not in ("input", "original", None):
            raise ValueError(f"label_size must be 'input', 'original' or None, got {label_size!r}")
        self.manifest = manifest
        self.classes = classes
        self.size = size
        self.label_size = label_size
        check_augment(augment)
        self.augment = {k: v for k, v in (augment or {}).items() if v}
        self.seed = seed
        self.keep_above = keep_above  # tiles with a side above this keep their size (sliding windows)

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, position = item if isinstance(item, tuple) else (item, item)
        entry = self.manifest[index]
        image = read_image(entry["filename"])
        label = None
        if self.label_size is not None:
            label = self.classes.to_index(read_label(entry["ann"]["seg_map"]))
            if label.shape != image.shape[:2]:
                raise TileReadError(
                    f"label '{entry['ann']['seg_map']}' is {label.shape[1]}x{label.shape[0]} but its image "
                    f"'{entry['filename']}' is {image.shape[1]}x{image.shape[0]}"
                )
        size = None if self.keep_above and max(image.shape[:2]) > self.keep_above else self.size
        orig_size = torch.tensor(image.shape[:2])
        if self.augment:
            image, label = self._augmented(image, label, position, size)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(resize_image(image, size).transpose(2, 0, 1))),
            "index": index,
            "orig_size": orig_size,
        }
        if label is not None:
            if self.label_size == "input":
                label = resize_index_map(label, size)
            sample["label"] = torch.from_numpy(label.astype(np.int64))
        return sample

    def _augmented(self, image: np.ndarray, label: np.ndarray | None, position: int, size: int | None):
        """Flips, then photometric changes (image only), then rescale and crop: one generator per sample."""
        rng = np.random.default_rng((self.seed, position))
        image, label = flip(image, label, rng, self.augment)
        if "photometric" in self.augment:
            image = photometric(image, rng, self.augment["photometric"])
        if "scale" in self.augment and label is not None:
            image, label = rescale_crop(image, label, rng, self.augment["scale"], size)
        return image, label


def collate(samples: list[dict]) -> dict:
    """Stack what has one shape; images or labels of different sizes stay lists."""
    images = [s["image"] for s in samples]
    batch = {
        "image": torch.stack(images) if all(i.shape == images[0].shape for i in images) else images,
        "index": torch.tensor([s["index"] for s in samples]),
        "orig_size": torch.stack([s["orig_size"] for s in samples]),
    }
    if "label" in samples[0]:
        labels = [s["label"] for s in samples]
        same = all(lab.shape == labels[0].shape for lab in labels)
        batch["label"] = torch.stack(labels) if same else labels
    return batch


class InfiniteSampler(torch.utils.data.Sampler):
    """An endless stream of seeded permutations, sharded across ranks, that can start mid-stream.

    Yields ``(index, position)``: ``position`` counts samples from the start of training over all
    ranks, so a resumed run (``start`` = samples already consumed) sees exactly the samples, in the
    same order and with the same augmentation draws, that an uninterrupted run would.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ValueError("cannot sample from an empty manifest")
        self.n, self.seed, self.start, self.rank, self.world_size = n, seed, start, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        epoch, perm = -1, None
        while True:
            if position // self.n != epoch:
                epoch = position // self.n
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield int(perm[position % self.n]), position
            position += self.world_size


def typical_tile_size(manifest: Sequence[dict], sample: int = 32) -> int | None:
    """The median longer side of up to ``sample`` tiles spread over the manifest (headers only): the scale
    a model trained on them expects to see imagery at."""
    if not manifest:
        return None
    step = max(1, len(manifest) // sample)
    sides = []
    for entry in list(manifest)[::step][:sample]:
        with Image.open(entry["filename"]) as im:
            sides.append(max(im.size))
    return int(np.median(sides))


def check_manifest_files(manifest: Sequence[dict]) -> None:
    """Fail before long work if a file the manifest names is gone (a stat each: seconds for 100k tiles)."""
    missing = []
    for entry in manifest:
        for path in (entry["filename"], entry.get("ann", {}).get("seg_map")):
            if path is not None and not Path(path).is_file():
                missing.append(path)
    if missing:
        shown = "\n  - ".join(missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise TileReadError(
            f"{len(missing)} file(s) named by the manifest do not exist (run data_prep again):"
            f"\n  - {shown}{more}"
        )
