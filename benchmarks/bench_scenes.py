"""Benchmark scene mapping (``naic_seg.core.scenes.map_scene``) on CPU. Prints one JSON document.

1. **Throughput**: a synthetic scene (default 3,000 x 3,000 px, 3-band uint8, 0.5 m, written into a temp
   folder) mapped end to end (strip reads, forward passes through ``Predictor.window_logits``, blending,
   arg-max, strip writes, COG conversion with overviews) against forward-only ``window_logits`` on
   in-memory batches of windows of the same size and count, the two alternated ``--repeats`` times (the
   VM's speed drifts): the median ratio of a pair. Random weights: speed does not depend on them. Target:
   end to end >= 0.85 x forward-only.
   Also km² per hour at 50 cm = megapixels/s x 0.25 m² x 3600.
2. **Memory**: for each size (default 2,000 and 20,000 px a side) the synthetic scene is written by
   blocks, then a subprocess maps it with a cheap model (a 1x1 convolution: the question is how memory
   grows with the scene, not how big a model is), its peak from ``getrusage`` and from sampling the PSS of
   its process tree every 0.2 s. Target: peaks within 200 MB of each other.
3. **Quality** (``--checkpoint``, ``--scenes``): every labelled scene mapped with blended windows vs the same
   scene cut into the submit path's tiles (``--tile`` px, each resized to the model's input and back, no
   overlap), both scored against ``<scene>_label.tif`` with the same confusion matrix. Scenes whose pixels
   were training tiles (``full_*``, see the scenes README) are reported apart from the headline figures;
   ``placed`` pools the headline scenes whose tiles sit at their own offsets in their source image (all but
   the GID mosaic, where a window off the tile grid sees unrelated places side by side).

    .venv/bin/python -m benchmarks.bench_scenes > bench_scenes.json
    .venv/bin/python -m benchmarks.bench_scenes --skip-throughput --skip-memory \\
        --checkpoint data/06_models/stage2_checkpoint.pt/<version>/stage2_checkpoint.pt \\
        --scenes ../shared/data/scenes
    .venv/bin/python -m benchmarks.bench_scenes --quick      # a smoke run: small sizes, seconds

``main(argv) -> dict`` is importable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import cpu_model, loadavg, run_sampled
from benchmarks._tiles import write_synthetic_scene

RATIO_TARGET = 0.85
MEMORY_TARGET_MB = 200.0
PIXEL_M = 0.5


def log(msg: str) -> None:
    print(f"[bench_scenes {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def random_predictor(arch: str, encoder: str, input_size: int, tile_size: int, batch: int):
    from naic_seg.core.labels import ClassTable
    from naic_seg.core.models import build_model
    from naic_seg.core.predict import PredictConfig, Predictor

    torch.manual_seed(0)
    model = {"arch": arch, "encoder": encoder, "output_stride": 16, "num_classes": 8}
    ckpt = {
        "model": model,
        "state_dict": build_model(**model).state_dict(),
        "classes": ClassTable.naic().as_config(),
        "preprocess": {"input_size": input_size, "tile_size": tile_size},
        "source": f"random {arch}/{encoder}",
    }
    return Predictor.from_checkpoints(
        [ckpt], PredictConfig(batch_size=batch, device="cpu"), ClassTable.naic()
    )


def forward_only(predictor, window: int, batch: int, n_windows: int) -> float:
    """Windows/s of ``window_logits`` on in-memory uint8 batches (after one warm-up batch)."""
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, size=(batch, 3, window, window), dtype=np.uint8))
    predictor.window_logits(images)
    done, t0 = 0, time.perf_counter()
    while done < n_windows:
        predictor.window_logits(images[: min(batch, n_windows - done)])
        done += min(batch, n_windows - done)
    return done / (time.perf_counter() - t0)


def bench_throughput(args, work: Path) -> dict:
    from naic_seg.core.labels import ClassTable
    from naic_seg.core.scenes import SceneOptions, map_scene

    arch, encoder, input_size = args.model.split(":")
    scene = write_synthetic_scene(work / f"throughput_{args.throughput_size}.tif", args.throughput_size)
    predictor = random_predictor(arch, encoder, int(input_size), args.window, args.batch)
    opts = SceneOptions(window=args.window, overlap=args.overlap, batch_size=args.batch, progress_every_s=30)
    stride = opts.stride
    n = math.ceil(max(args.throughput_size - args.window, 0) / stride + 1) ** 2
    # This VM's speed drifts by +-20 % from one run to the next: alternate the two measurements and take
    # the median of the per-pair ratios.
    pairs = []
    for rep in range(args.repeats):
        log(f"throughput {rep + 1}/{args.repeats}: forward-only, {n} windows of {args.window} px, then a map")
        fwd = forward_only(predictor, args.window, args.batch, n)
        result = map_scene(
            scene, work / "throughput_map.tif", predictor.window_logits, ClassTable.naic(), opts
        )
        pairs.append((fwd, result.windows / result.seconds, result))
    ratios = sorted(e2e / fwd for fwd, e2e, _ in pairs)
    fwd, e2e, result = sorted(pairs, key=lambda p: p[1] / p[0])[len(pairs) // 2]
    mpx = result.megapixels_per_s
    return {
        "scene_px": args.throughput_size,
        "model": args.model,
        "window": args.window,
        "overlap": args.overlap,
        "batch": args.batch,
        "windows": result.windows,
        "forward_only_windows_per_s": round(fwd, 3),
        "end_to_end_windows_per_s": round(e2e, 3),
        "end_to_end_s": round(result.seconds, 2),
        "ratio": round(ratios[len(ratios) // 2], 3),
        "ratios": [round(r, 3) for r in ratios],
        "target": RATIO_TARGET,
        "megapixels_per_s": round(mpx, 4),
        "km2_per_hour_at_50cm": round(mpx * 1e6 * PIXEL_M**2 * 3600 / 1e6, 3),
    }


CHILD = r"""
import json, sys, time
sys.path[:0] = [p for p in sys.argv[4].split(":") if p]
import torch
from naic_seg.core.labels import ClassTable
from naic_seg.core.scenes import SceneOptions, map_scene
torch.manual_seed(0)
conv = torch.nn.Conv2d(3, 8, 1)
def logits(images):
    with torch.inference_mode():
        return conv(images.float() / 255)
t0 = time.perf_counter()
r = map_scene(sys.argv[1], sys.argv[2], logits, ClassTable.naic(), SceneOptions(window=int(sys.argv[3]),
              overlap=float(sys.argv[5]), batch_size=8, progress_every_s=30))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec.
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"seconds": time.perf_counter() - t0, "windows": r.windows, "maxrss_mb": hwm / 1024}))
"""


def bench_memory(args, work: Path) -> dict:
    rows = []
    src = str(Path(__file__).resolve().parents[1] / "src")
    for side in args.memory_sizes:
        scene = work / f"memory_{side}.tif"
        t0 = time.perf_counter()
        write_synthetic_scene(scene, side)
        written_s = time.perf_counter() - t0
        size_mb = scene.stat().st_size / 1e6
        log(f"memory: {side}² scene written in {written_s:.0f} s ({size_mb:.0f} MB), mapping")
        out = work / f"memory_{side}_stdout.json"
        with open(out, "w") as fh:
            status, wall, sampler = run_sampled(
                [sys.executable, "-c", CHILD, str(scene), str(work / f"memory_{side}_map.tif"),
                 str(args.window), os.pathsep.join([src, *sys.path]), str(args.overlap)],
                cwd=work, timeout=args.timeout, interval=0.2, stdout=fh,
            )  # fmt: skip
        child = json.loads(out.read_text() or "{}") if status == 0 else {}
        rows.append(
            {
                "scene_px": side,
                "status": status,
                "wall_s": round(wall, 1),
                "map_s": round(child.get("seconds", float("nan")), 1),
                "windows": child.get("windows"),
                "peak_rss_mb": round(child.get("maxrss_mb", float("nan")), 1),
                "peak_tree_pss_mb": round(sampler.peak["tree_pss"] / 1024, 1),
            }
        )
        scene.unlink()
        (work / f"memory_{side}_map.tif").unlink(missing_ok=True)
        log(f"memory: {rows[-1]}")
    ok = [r for r in rows if r["status"] == 0]
    growth = max(r["peak_rss_mb"] for r in ok) - min(r["peak_rss_mb"] for r in ok) if len(ok) > 1 else None
    return {"model": "1x1 conv (cheap)", "window": args.window, "overlap": args.overlap, "rows": rows,
            "rss_spread_mb": growth,
            "target_mb": MEMORY_TARGET_MB}  # fmt: skip


def _segments(length: int, tile: int, offset: int) -> list[tuple[int, int, int]]:
    """(start, stop, window start) cutting an axis into tiles on a grid shifted by ``offset``: each segment
    is predicted from a whole ``tile``-px window that holds it (flush with the scene's edges)."""
    cuts = sorted({0, length, *range(offset % tile or tile, length, tile)})
    return [(a, b, min(max(a, 0), max(length - tile, 0))) for a, b in zip(cuts, cuts[1:], strict=False)]


def tiled_confusion(
    scene: Path, label: Path, predictor, tile: int, classes, offset=0, fill=None
) -> np.ndarray:
    """The submit path on a scene: non-overlapping ``tile`` px tiles, each through ``window_logits``
    (resized to the input size and back, as submit does), arg-max; all-nodata tiles left as nodata.
    ``offset`` 0: the grid of the scenes' rs8 tiles (what submit saw); otherwise a grid that does not know
    where they are, as for any other scene. ``fill``: SceneOptions whose nodata fill the tiles get."""
    import rasterio
    from rasterio.windows import Window

    from naic_seg.core.labels import IGNORE_INDEX
    from naic_seg.core.metrics import confusion_matrix
    from naic_seg.core.scenes import fill_nodata

    n = classes.num_classes
    confusion = torch.zeros(n, n, dtype=torch.int64)
    with rasterio.open(scene) as src, rasterio.open(label) as lab:
        for y0, y1, wy in _segments(src.height, tile, offset):
            for x0, x1, wx in _segments(src.width, tile, offset):
                win = Window(wx, wy, min(tile, src.width - wx), min(tile, src.height - wy))
                valid = src.dataset_mask(window=win) > 0
                inner = (slice(y0 - wy, y1 - wy), slice(x0 - wx, x1 - wx))
                if not valid[inner].any():
                    continue
                image = src.read([1, 2, 3], window=win)
                if fill is not None:
                    image = fill_nodata(image, valid, fill)
                pred = predictor.window_logits(torch.from_numpy(image[None].copy()))[0].argmax(0)
                truth = classes.to_index(lab.read(1, window=win))
                truth[~valid] = IGNORE_INDEX
                confusion += confusion_matrix(
                    pred[inner].to(torch.uint8).contiguous(), torch.from_numpy(truth[inner].copy()), n
                )
    return confusion.numpy()


def bench_quality(args, work: Path) -> dict:
    from naic_seg.core.checkpoint import load_checkpoint
    from naic_seg.core.labels import ClassTable
    from naic_seg.core.metrics import scores
    from naic_seg.core.predict import PredictConfig, Predictor
    from naic_seg.core.scenes import (
        SceneOptions,
        label_path_for,
        map_scene,
        mean_colour,
        score_map,
        split_scene_files,
    )

    classes = ClassTable.naic()
    ckpt = load_checkpoint(args.checkpoint)
    predictor = Predictor.from_checkpoints(
        [ckpt], PredictConfig(batch_size=args.batch, device="cpu"), classes
    )
    window = args.quality_window or predictor.tile_size or predictor.input_size
    opts = SceneOptions(
        window=window, overlap=args.overlap, batch_size=args.batch, progress_every_s=30,
        nodata_fill=args.nodata_fill, fill_colour=mean_colour(predictor.normalization),
    )  # fmt: skip
    scenes, _ = split_scene_files(args.scenes.iterdir())
    per_scene = {}
    # blended, tiled, shifted confusion matrices per group of scenes
    totals = {g: [np.zeros((8, 8)) for _ in range(3)] for g in ("headline", "placed", "all")}
    for scene in scenes:
        label = label_path_for(scene)
        if label is None:
            continue
        out = work / f"{scene.stem}_map.tif"
        result = map_scene(scene, out, predictor.window_logits, classes, opts)
        blended = np.asarray(score_map(out, label, classes)["confusion"])
        tiled = tiled_confusion(scene, label, predictor, args.tile, classes)
        shifted = tiled_confusion(scene, label, predictor, args.tile, classes, args.tile // 2, opts)
        per_scene[scene.stem] = {
            **{f"{k}_{m}": round(scores(c)[m], 4) for k, c in (("blended", blended), ("tiled", tiled),
               ("shifted_tiled", shifted)) for m in ("mIoU", "FWIoU")},
            "map_s": round(result.seconds, 1),
        }  # fmt: skip
        log(f"quality: {scene.stem}: {per_scene[scene.stem]}")
        groups = ["all"] if scene.stem.startswith("full_") else ["all", "headline"]
        if "headline" in groups and "mosaic" not in scene.stem:
            groups.append("placed")
        for g in groups:
            for total, c in zip(totals[g], (blended, tiled, shifted), strict=True):
                total += c
    summary = {
        g: {
            f"{k}_{m}": round(scores(c)[m], 4)
            for k, c in zip(("blended", "tiled", "shifted_tiled"), cs, strict=True)
            for m in ("mIoU", "FWIoU")
        }
        for g, cs in totals.items()
    }
    return {
        "checkpoint": str(args.checkpoint),
        "window": window,
        "tile": args.tile,
        "nodata_fill": args.nodata_fill,
        "overlap": args.overlap,
        "tiled": "tiles on the scenes' rs8 tile grid (what submit saw), nodata as read",
        "shifted_tiled": "tiles on a grid shifted by half a tile (not knowing the rs8 grid), nodata filled "
        "as blended",
        "input_size": predictor.input_size,
        "headline_scenes": "rs8test_* (full_* scenes hold rs8 training tiles)",
        "placed_scenes": "the headline scenes but the mosaic: tiles at their own offsets in their source "
        "image (the mosaic puts unrelated places side by side)",
        "summary": summary,
        "scenes": per_scene,
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="pspnet:resnet18:128", help="arch:encoder:input_size (random weights)")
    ap.add_argument("--window", type=int, default=256, help="window side in scene pixels")
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--throughput-size", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=5, help="forward-only / end-to-end pairs (median ratio)")
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint file, for the quality section")
    ap.add_argument(
        "--scenes", type=Path, default=Path(os.environ.get("NAIC_SEG_SCENES", "../shared/data/scenes"))
    )
    ap.add_argument("--quality-window", type=int, help="default: the checkpoint's tile size")
    ap.add_argument("--tile", type=int, default=256, help="the submit path's tile side")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--nodata-fill", default="mirror", choices=["mirror", "mean", "none"])
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--tmp", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="smoke: a 600² scene, memory at 300² and 900²")
    args = ap.parse_args(argv)
    if args.quick:
        args.throughput_size, args.memory_sizes, args.model, args.window = (
            600,
            [300, 900],
            "pspnet:resnet18:64",
            128,
        )
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    doc = {
        "benchmark": "scenes",
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        },
        "loadavg_start": loadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench_scenes_", dir=args.tmp) as tmp:
        work = Path(tmp)
        if not args.skip_throughput:
            doc["throughput"] = bench_throughput(args, work)
        if not args.skip_memory:
            doc["memory"] = bench_memory(args, work)
        if args.checkpoint:
            doc["quality"] = bench_quality(args, work)
    doc["loadavg_end"] = loadavg()
    doc["peak_rss_mb_this_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return doc


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
