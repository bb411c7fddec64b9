"""Images/s of the training DataLoader, exactly as the engine builds it, against the bare decode rate.

The loader is ``naic_seg.core.runtime.Runtime.loader`` (the engine's own factory: batch 4, ``collate``,
``prefetch_factor`` 4, seeded generator) over ``ManifestDataset(label_size="input", size=S)`` with the
engine's ``InfiniteSampler`` (``--sampler infinite``, the default) or a plain sequential sampler, at each
``--workers`` count. Per worker count it reports the start-up (``iter()`` to the first batch: worker
fork, first decodes) apart from the steady rate (``--batches`` batches after ``--warmup-batches``).

Two in-process references on the same files (one process, one thread, no DataLoader):

* ``decode_ceiling``: PIL open + ``np.asarray`` of image and label, no resize, no label mapping; what
  one core can at best deliver, the ceiling of a 0-worker loader (workers can exceed it by using
  several cores).
* ``dataset_getitem``: ``ManifestDataset[i]`` (decode + label mapping + resize + tensor), i.e. the
  per-sample work a worker does, without batching and inter-process transfer.

    .venv/bin/python -m benchmarks.bench_loader > bench_loader.json
    .venv/bin/python -m benchmarks.bench_loader --size 256 --workers 0 2 --sampler sequential

Manifests are built from the rs8 folder directly (images and labels paired by file stem, sorted by id),
so no Kedro run is needed and nothing under the project's data/ is read or written. One JSON document
goes to stdout, progress to stderr; ``collect(argv) -> dict`` returns it without printing.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import numpy as np
from PIL import Image

from benchmarks._common import add_rs8_argument, host_info, loadavg, rs8_manifest, set_threads
from naic_seg.core.data import InfiniteSampler, ManifestDataset
from naic_seg.core.labels import ClassTable
from naic_seg.core.runtime import Runtime  # its loader is the engine's DataLoader factory

SEED = 1996  # TrainConfig's default seed


def log(msg: str) -> None:
    print(f"[bench_loader {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bare_decode(manifest: list[dict], n: int, repeats: int = 2) -> dict:
    """PIL open + np.asarray of image and label (no resize, no mapping), best of ``repeats`` passes."""
    entries = [manifest[i % len(manifest)] for i in range(n)]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for e in entries:
            with Image.open(e["filename"]) as im:
                np.asarray(im)
            with Image.open(e["ann"]["seg_map"]) as im:
                np.asarray(im)
        best = min(best, time.perf_counter() - start)
    return {
        "tiles": n,
        "passes": repeats,
        "seconds": round(best, 4),
        "img_s": round(n / best, 2),
        "ms_per_tile": round(1000 * best / n, 3),
    }


def dataset_getitem(dataset: ManifestDataset, n: int, repeats: int = 2) -> dict:
    """``dataset[i]`` in this process (decode + mapping + resize + tensor), best of ``repeats`` passes."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            dataset[i % len(dataset)]
        best = min(best, time.perf_counter() - start)
    return {
        "tiles": n,
        "passes": repeats,
        "seconds": round(best, 4),
        "img_s": round(n / best, 2),
        "ms_per_tile": round(1000 * best / n, 3),
    }


def time_loader(
    dataset: ManifestDataset, workers: int, batch: int, batches: int, warmup: int, sampler_kind: str
) -> dict:
    """Start-up (``iter`` -> first batch) and the steady rate over ``batches`` after ``warmup`` more."""
    sampler = InfiniteSampler(len(dataset), SEED) if sampler_kind == "infinite" else None
    loader = Runtime.resolve("cpu").loader(dataset, batch, workers, sampler, seed=SEED)
    if sampler is None:  # a sequential pass ends: never ask for more batches than it has
        available = len(dataset) // batch - 1 - warmup
        if available < 1:
            raise ValueError(
                f"{len(dataset)} tiles are too few for batch {batch} and {warmup} warm-up batches"
            )
        batches = min(batches, available)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    startup = time.perf_counter() - t0
    for _ in range(warmup):
        next(it)
    images = 0
    t1 = time.perf_counter()
    for _ in range(batches):
        images += len(next(it)["image"])
    seconds = time.perf_counter() - t1
    del it, loader  # shuts the workers down
    gc.collect()
    return {
        "workers": workers,
        "sampler": sampler_kind,
        "startup_s": round(startup, 4),
        "warmup_batches": warmup,
        "batches": batches,
        "images": images,
        "seconds": round(seconds, 4),
        "img_s": round(images / seconds, 2),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_rs8_argument(ap)
    ap.add_argument("--tiles", type=int, default=None, help="use the first N train tiles (default: all)")
    ap.add_argument("--size", type=int, default=512, help="input size the tiles are resized to (default 512)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sampler", choices=["infinite", "sequential"], default="infinite")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per worker count")
    ap.add_argument("--warmup-batches", type=int, default=3, help="untimed batches after the first")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument(
        "--decode-tiles", type=int, default=None, help="tiles for the references (default: batches x batch)"
    )
    return ap.parse_args(argv)


def collect(argv: list[str] | None = None) -> dict:
    """Run the benchmark and return its JSON document."""
    args = parse_args(argv)
    if args.batches < 1 or args.batch < 1 or args.warmup_batches < 0:
        raise SystemExit("--batches and --batch must be >= 1, --warmup-batches >= 0")
    set_threads(args.threads)
    doc: dict = {"benchmark": "loader", "loadavg_start": loadavg(), "host": host_info()}
    manifest = rs8_manifest(args.rs8, "train", args.tiles)
    classes = ClassTable.naic()
    dataset = ManifestDataset(manifest, classes, args.size, label_size="input", seed=SEED)
    n_ref = args.decode_tiles or min(len(manifest), args.batches * args.batch)
    doc["settings"] = {
        "rs8": str(args.rs8),
        "tiles": len(manifest),
        "size": args.size,
        "batch": args.batch,
        "workers": args.workers,
        "sampler": args.sampler,
        "batches": args.batches,
        "warmup_batches": args.warmup_batches,
        "reference_tiles": n_ref,
        "loader": "naic_seg.core.runtime.Runtime.loader (the engine's), ManifestDataset label_size='input'",
    }
    log(f"{len(manifest)} tiles from {args.rs8}, size {args.size}, batch {args.batch}, load {loadavg()}")
    with Image.open(manifest[0]["filename"]) as im:
        doc["settings"]["tile_size"] = f"{im.width}x{im.height}"

    bare_decode(manifest, min(n_ref, 8), repeats=1)  # warm the page cache and PIL's plugins
    doc["decode_ceiling"] = bare_decode(manifest, n_ref)
    log(f"bare decode: {doc['decode_ceiling']['img_s']} img/s")
    doc["dataset_getitem"] = dataset_getitem(dataset, n_ref)
    log(f"dataset[i]: {doc['dataset_getitem']['img_s']} img/s")

    records = []
    for workers in args.workers:
        rec = time_loader(dataset, workers, args.batch, args.batches, args.warmup_batches, args.sampler)
        rec["ratio_to_decode"] = round(rec["img_s"] / doc["decode_ceiling"]["img_s"], 3)
        rec["ratio_to_getitem"] = round(rec["img_s"] / doc["dataset_getitem"]["img_s"], 3)
        rec["loadavg"] = loadavg()
        log(f"workers={workers}: {rec['img_s']} img/s (start-up {rec['startup_s']} s, load {rec['loadavg']})")
        records.append(rec)
    doc["records"] = records
    doc["loadavg_end"] = loadavg()
    doc["method"] = (
        "startup_s: iter(loader) to the first batch (worker fork + first decodes). img_s: images of "
        "`batches` batches / their wall time, after `warmup_batches` untimed ones. decode_ceiling: PIL "
        "open + np.asarray of image and label in this process, no resize (best of 2 passes). "
        "dataset_getitem: ManifestDataset[i] in this process (best of 2). A loadavg above the CPU count "
        "means the figures are contended."
    )
    return doc


def main(argv: list[str] | None = None) -> dict:
    doc = collect(argv)
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
