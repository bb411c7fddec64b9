"""Inputs the benchmarks build: large contest-format tile trees (hard links to a small real sample) and
synthetic GeoTIFF scenes.

``make_linked_tree`` lays out ``<dst>/train/images/<id>.tif``, ``<dst>/train/labels/<id>.png`` and
``<dst>/test/images/<id>.tif`` (optionally ``<dst>/test/labels``), cycling through the source tiles
under new unique integer ids. Hard links cost no disk space and ~10 µs each, so 100,000 tiles take a
few seconds. Where linking is impossible (another file system, a link-count limit, a refused link)
it falls back to copying and says so on stderr and in the returned summary.

``write_synthetic_scene`` writes a smooth 3-band uint8 scene with noise, block by block (so a 20,000² one
needs little memory), for the benchmarks that time or measure scene mapping.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

# errno values after which copying is the only way: another device, too many links to one inode
# (ext4 allows 65,000), link refused (fs.protected_hardlinks), or no hard links on that file system.
_FALLBACK_ERRNOS = {errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}


def _source_files(folder: Path) -> list[Path]:
    """Visible files of ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_file() and not e.name.startswith("."))


def _source_pairs(split_root: Path, with_labels: bool) -> list[tuple[Path, Path | None]]:
    """(image, label-or-None) per tile id of ``split_root``; only ids with a label when one is needed."""
    images = {p.stem: p for p in _source_files(split_root / "images")}
    if not with_labels:
        return [(images[t], None) for t in sorted(images)]
    labels = {p.stem: p for p in _source_files(split_root / "labels")}
    return [(images[t], labels[t]) for t in sorted(images.keys() & labels.keys())]


class _Linker:
    """``os.link`` with a sticky fall-back to copying; counts what it did."""

    def __init__(self) -> None:
        self.linked = 0
        self.copied = 0
        self.fallback_reason: str | None = None

    def __call__(self, src: str, dst: str) -> None:
        if self.fallback_reason is None:
            try:
                os.link(src, dst)
                self.linked += 1
                return
            except OSError as err:
                if err.errno not in _FALLBACK_ERRNOS:
                    raise
                self.fallback_reason = f"{errno.errorcode.get(err.errno, err.errno)}: {err.strerror}"
                print(
                    f"[make_linked_tree] hard link {src} -> {dst} failed ({self.fallback_reason}); "
                    "copying the remaining files instead",
                    file=sys.stderr,
                )
        shutil.copyfile(src, dst)
        self.copied += 1


def _fill(
    link: _Linker,
    pairs: list[tuple[Path, Path | None]],
    count: int,
    first_id: int,
    image_dir: Path,
    label_dir: Path | None,
) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    if label_dir is not None:
        label_dir.mkdir(parents=True, exist_ok=True)
    # Plain string concatenation: building Path objects would dominate at 100,000+ files.
    img_prefix, lab_prefix = str(image_dir) + os.sep, str(label_dir) + os.sep
    srcs = [
        (str(img), img.suffix, str(lab) if lab else None, lab.suffix if lab else "") for img, lab in pairs
    ]
    for k in range(count):
        img, img_suffix, lab, lab_suffix = srcs[k % len(srcs)]
        tid = str(first_id + k)
        link(img, img_prefix + tid + img_suffix)
        if label_dir is not None:
            link(lab, lab_prefix + tid + lab_suffix)


def make_linked_tree(
    src_root: str | os.PathLike,
    dst_root: str | os.PathLike,
    n_train: int,
    n_test: int,
    *,
    test_labels: bool = False,
    first_id: int = 100000,
) -> dict:
    """Build a contest-format tree of ``n_train`` labelled train tiles and ``n_test`` test tiles.

    Args:
        src_root: a contest-format tree to take tiles from (``train/images``, ``train/labels``,
            ``test/images``, optionally ``test/labels``). Test tiles cycle through ``src_root/test``
            when it has images (and labels, if ``test_labels``), else through the train tiles.
        dst_root: where to build the tree; created if absent, must not hold a ``train`` or ``test``
            folder already.
        n_train, n_test: how many tiles of each split (0 leaves that split's folders empty).
        test_labels: also write ``test/labels`` (for benchmarks that score predictions).
        first_id: ids are consecutive integers from here, train first, then test, so every id in the
            tree is unique (across splits too).

    Returns:
        a summary dict: ``root``, ``train``, ``test``, ``files``, ``method`` ("hardlink", "copy"
        or "hardlink+copy"), ``linked``, ``copied``, ``fallback_reason`` and ``seconds``.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"tile counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    src, dst = Path(src_root), Path(dst_root)
    for split in ("train", "test"):
        if (dst / split).exists():
            raise FileExistsError(f"{dst / split} already exists; give make_linked_tree a fresh dst_root")
    t0 = time.perf_counter()
    link = _Linker()

    train_pairs = _source_pairs(src / "train", with_labels=True)
    if n_train and not train_pairs:
        raise FileNotFoundError(f"no labelled train tiles under {src / 'train'}")
    _fill(link, train_pairs, n_train, first_id, dst / "train" / "images", dst / "train" / "labels")

    test_pairs: list[tuple[Path, Path | None]] = []
    if (src / "test" / "images").is_dir() and (not test_labels or (src / "test" / "labels").is_dir()):
        test_pairs = _source_pairs(src / "test", with_labels=test_labels)
    if not test_pairs:
        test_pairs = train_pairs if test_labels else [(img, None) for img, _ in train_pairs]
    if n_test and not test_pairs:
        raise FileNotFoundError(f"no test (or train) tiles under {src}")
    test_label_dir = dst / "test" / "labels" if test_labels else None
    _fill(link, test_pairs, n_test, first_id + n_train, dst / "test" / "images", test_label_dir)

    method = {(True, False): "hardlink", (False, True): "copy", (True, True): "hardlink+copy"}.get(
        (link.linked > 0, link.copied > 0), "none"
    )
    return {
        "root": str(dst),
        "train": n_train,
        "test": n_test,
        "files": link.linked + link.copied,
        "method": method,
        "linked": link.linked,
        "copied": link.copied,
        "fallback_reason": link.fallback_reason,
        "seconds": round(time.perf_counter() - t0, 3),
    }


PIXEL_M = 0.5  # the synthetic scenes' pixel size in metres


def write_synthetic_scene(path: Path, side: int, seed: int = 0, block: int = 512) -> Path:
    """A side x side 3-band uint8 GeoTIFF (tiled, DEFLATE, EPSG:32650 at 0.5 m), written block by block:
    smooth colour fields plus noise, cheap to make and to compress, never whole in memory."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * np.pi, size=(3, 2))
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "crs": CRS.from_epsg(32650), "transform": from_origin(300_000.0, 4_000_000.0, PIXEL_M, PIXEL_M),
        "tiled": True, "blockxsize": block, "blockysize": block, "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, side, block):
            h = min(block, side - y)
            for x in range(0, side, block):
                w = min(block, side - x)
                yy, xx = np.mgrid[y : y + h, x : x + w].astype(np.float32)
                bands = [
                    128 + 80 * np.sin(xx / 97 + phases[b, 0]) * np.cos(yy / 61 + phases[b, 1])
                    for b in range(3)
                ]
                noise = rng.normal(0, 12, size=(3, h, w))
                dst.write(
                    np.clip(np.stack(bands) + noise, 1, 255).astype(np.uint8), window=Window(x, y, w, h)
                )
    return path
