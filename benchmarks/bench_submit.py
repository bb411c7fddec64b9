"""Benchmark the submit path (predict -> predictions pickle -> contest zip and its check) on CPU.

Two figures, both on hard-linked copies of the rs8 test tiles (``_tiles.make_linked_tree``):

1. **Memory stays flat as the test set grows.** For each size (default 1,000, 10,000 and 100,000 tiles) a
   fresh subprocess runs exactly what ``kedro run --pipeline submit`` runs, minus Kedro's start-up:
   the manifest is read with ``AtomicJSONDataset``, the checkpoint with ``TorchCheckpointDataset``
   (versioned, as in the catalog), then the nodes run with the catalog's datasets:
   ``predict_test_tiles`` -> ``PredictionsPickleDataset.save`` -> ``.load`` -> ``make_submission`` ->
   ``SubmissionZipDataset.save`` (which writes and checks the zip), with the options of
   ``conf/base/parameters_submit.yml``. A small random-weight model (default PSPNet
   ResNet-18 at 64 px) keeps 100,000 tiles within minutes on 2 CPUs: the question is how memory grows
   with the number of tiles, not how fast a big model is. Peak memory per size comes from the kernel
   (``getrusage`` ``ru_maxrss`` of the process and of its largest waited-for child, i.e. a DataLoader
   worker) and from sampling ``/proc/<pid>/smaps_rollup`` of the process tree every 0.2 s
   (``_common.run_sampled``, as bench_data_prep does). Target: peak at 100,000 minus peak at 1,000 < 200 MB.

2. **End-to-end throughput >= 0.8 x forward-only.** In one process, per model: forward-only images/s
   of the model on a synthetic in-memory batch of normalised floats (eval mode, ``torch.inference_mode``,
   warm-up first), then the whole submit path on N linked tiles (decode, resize to the input size,
   forward, resize back, arg-max, PNG, pickle, zip, check) for each DataLoader worker count asked for,
   then forward-only again (the machine may be shared: the ratio uses the higher forward figure).

    .venv/bin/python -m benchmarks.bench_submit > bench_submit.json
    .venv/bin/python -m benchmarks.bench_submit --skip-memory --throughput pspnet:resnet50:512:4:80

One JSON document goes to stdout; progress goes to stderr. ``main(argv) -> dict`` is importable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from benchmarks._common import add_rs8_argument, cpu_seconds, loadavg, run_sampled, status_kb
from benchmarks._tiles import make_linked_tree

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUBMIT_PARAMS = PROJECT_ROOT / "conf" / "base" / "parameters_submit.yml"
MEMORY_TARGET_MB = 200.0
RATIO_TARGET = 0.8
SAMPLE_INTERVAL_S = 0.2
TIMELINE_POINTS = 20  # RSS samples per phase in the child's timeline


def log(msg: str) -> None:
    print(f"[bench_submit {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def submit_options(**overrides) -> dict:
    """``params:submit`` as the pipeline gets it (conf/base), with the benchmark's overrides."""
    import yaml

    options = yaml.safe_load(SUBMIT_PARAMS.read_text())["submit"]
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


def classes_config() -> list[dict]:
    """``params:classes`` of conf/base (the NAIC table)."""
    import yaml

    with contextlib.suppress(OSError, KeyError, TypeError):
        return yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters.yml").read_text())["classes"]
    from naic_seg.core.labels import ClassTable

    return ClassTable.naic().as_config()


def test_manifest(tree: Path) -> list[dict]:
    """The test manifest data_prep would write for ``tree``: ``{"filename": ...}`` in id order."""
    from naic_seg.core.tiles import id_sort_key

    folder = tree / "test" / "images"
    with os.scandir(folder) as entries:
        paths = [e.path for e in entries if e.is_file() and not e.name.startswith(".")]
    paths.sort(key=lambda p: id_sort_key(Path(p).stem))
    return [{"filename": p} for p in paths]


def random_checkpoint(arch: str, encoder: str, output_stride: int, input_size: int, classes: list[dict]):
    """A stage-2 checkpoint of a random-weight model, as training would save it."""
    import torch

    from naic_seg.core.checkpoint import make_checkpoint
    from naic_seg.core.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, encoder, num_classes=len(classes), output_stride=output_stride, pretrained=None)
    return make_checkpoint(
        dict(model.config),
        model.state_dict(),
        0,
        {},
        classes,
        stage="stage2",
        preprocess={"input_size": input_size},
    )


def catalog_checkpoint(checkpoint: dict | None, path: Path):
    """Save ``checkpoint`` (if given) and load it back through the catalog's dataset type.

    Returns whatever ``TorchCheckpointDataset.load`` gives the submit nodes (the catalog declares the
    checkpoints ``versioned: true``), so the nodes get exactly what ``kedro run`` would hand them.
    """
    from kedro.io.core import Version

    from naic_seg.datasets import TorchCheckpointDataset

    if checkpoint is not None:
        TorchCheckpointDataset(str(path), version=Version(None, None)).save(checkpoint)
    return TorchCheckpointDataset(str(path), version=Version(None, None)).load()


class _RssTimeline:
    """Passes a stream through and notes (records so far, VmRSS MB) every ``every`` records."""

    def __init__(self, total: int):
        self.every = max(1, total // TIMELINE_POINTS)
        self.points: list[tuple[int, float | None]] = []

    def wrap(self, stream):
        for n, item in enumerate(stream, 1):
            yield item
            if n % self.every == 0:
                self.points.append((n, _mb(status_kb("VmRSS"))))


def run_submit_path(work: Path, manifest, checkpoint, classes: list[dict], options: dict) -> dict:
    """The submit pipeline's predict and zip nodes with their catalog datasets; timings and counts."""
    from naic_seg.datasets import PredictionsPickleDataset, SubmissionZipDataset
    from naic_seg.pipelines.submit.nodes import make_submission, predict_test_tiles

    preds_ds = PredictionsPickleDataset(str(work / "test_predictions.pkl"))
    zip_ds = SubmissionZipDataset(str(work / "submission.zip"))
    n = len(manifest)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    stream = predict_test_tiles(manifest, checkpoint, checkpoint, classes, options)
    predict_timeline = _RssTimeline(n)
    preds_ds.save(predict_timeline.wrap(stream))
    t1 = time.perf_counter()
    hwm_predict = status_kb("VmHWM")
    submission = make_submission(preds_ds.load(), manifest, classes)
    zip_timeline = _RssTimeline(n)
    submission.entries = zip_timeline.wrap(submission.entries)
    zip_ds.save(submission)
    t2 = time.perf_counter()
    with zipfile.ZipFile(zip_ds.load().path) as zf:
        entries = len(zf.namelist())
    return {
        "tiles": n,
        "zip_entries": entries,
        "entries_ok": entries == n,
        "seconds": {
            "end_to_end": round(t2 - t0, 3),
            "predict_and_pickle": round(t1 - t0, 3),
            "zip_and_check": round(t2 - t1, 3),
        },
        "tiles_per_s": round(n / (t2 - t0), 2),
        "tiles_per_cpu_s": round(n / (cpu_seconds() - cpu0), 3),
        "bytes": {
            "predictions_pickle": (work / "test_predictions.pkl").stat().st_size,
            "submission_zip": (work / "submission.zip").stat().st_size,
        },
        "vm_hwm_after_predict_mb": _mb(hwm_predict),
        "rss_timeline_mb": {"predict": predict_timeline.points, "zip": zip_timeline.points},
    }


# ------------------------------------------------------------------------------- 1. memory (child)
def _child_memory(config_path: str) -> None:
    """One size in a fresh process: load what the catalog would, run the nodes, write the result."""
    import torch

    from naic_seg.datasets import AtomicJSONDataset

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[child %(asctime)s] %(message)s")
    cfg = json.loads(Path(config_path).read_text())
    work = Path(cfg["work"])
    rss_start = status_kb("VmRSS")
    manifest = AtomicJSONDataset(cfg["manifest"]).load()
    checkpoint = catalog_checkpoint(None, Path(cfg["checkpoint"]))
    rss_loaded = status_kb("VmRSS")
    result = run_submit_path(work, manifest, checkpoint, cfg["classes"], cfg["options"])
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(
        {
            "torch_threads": torch.get_num_threads(),
            "rss_after_imports_mb": _mb(rss_start),
            "rss_after_catalog_loads_mb": _mb(rss_loaded),
            "ru_maxrss_mb": {"process": _mb(own.ru_maxrss), "largest_worker": _mb(kids.ru_maxrss)},
            "cpu_seconds": {
                "process": round(own.ru_utime + own.ru_stime, 1),
                "workers": round(kids.ru_utime + kids.ru_stime, 1),
            },
        }
    )
    Path(cfg["result"]).write_text(json.dumps(result))


# ------------------------------------------------------------------------------ 1. memory (parent)
def bench_memory_size(args, work: Path, n_tiles: int, checkpoint_path: Path, options: dict) -> dict:
    classes = classes_config()
    size_dir = work / f"mem_{n_tiles}"
    size_dir.mkdir()
    log(f"memory: linking {n_tiles} test tiles under {size_dir / 'tree'}")
    built = make_linked_tree(args.rs8, size_dir / "tree", 0, n_tiles)
    log(f"  {built['files']} files by {built['method']} in {built['seconds']} s")
    from naic_seg.datasets import AtomicJSONDataset

    manifest_path = size_dir / "test_manifest.json"
    AtomicJSONDataset(str(manifest_path)).save(test_manifest(size_dir / "tree"))
    config = {
        "work": str(size_dir),
        "manifest": str(manifest_path),
        "checkpoint": str(checkpoint_path),
        "classes": classes,
        "options": options,
        "result": str(size_dir / "result.json"),
    }
    (size_dir / "config.json").write_text(json.dumps(config))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-memory", str(size_dir / "config.json")]
    log(f"memory: submit path on {n_tiles} tiles in a fresh process")
    load_start = loadavg()
    returncode, wall, sampler = run_sampled(
        cmd, PROJECT_ROOT, args.timeout, interval=SAMPLE_INTERVAL_S, stdout=subprocess.DEVNULL
    )
    load_end = loadavg()
    result_path = Path(config["result"])
    child = json.loads(result_path.read_text()) if returncode == 0 and result_path.exists() else {}
    record = {
        "tiles": n_tiles,
        "returncode": returncode,
        "tree": {k: built[k] for k in ("method", "files", "seconds", "fallback_reason")},
        "wall_seconds_incl_startup": round(wall, 2),
        **{k: child.get(k) for k in ("seconds", "tiles_per_s", "zip_entries", "entries_ok", "bytes")},
        "peak_mb": {
            "process_ru_maxrss": (child.get("ru_maxrss_mb") or {}).get("process"),
            "largest_worker_ru_maxrss": (child.get("ru_maxrss_mb") or {}).get("largest_worker"),
            "sampled_process_rss": _mb(sampler.peak["main_rss"]),
            "sampled_tree_pss": _mb(sampler.peak["tree_pss"]),
            "sampled_tree_rss_sum": _mb(sampler.peak["tree_rss"]),
            "sampled_largest_worker_uss": _mb(sampler.peak["child_uss"]),
        },
        "max_worker_processes_seen": sampler.max_children,
        **{
            k: child.get(k)
            for k in (
                "rss_after_imports_mb",
                "rss_after_catalog_loads_mb",
                "vm_hwm_after_predict_mb",
                "rss_timeline_mb",
                "cpu_seconds",
                "torch_threads",
            )
        },
        "loadavg": {"start": load_start, "end": load_end},
    }
    log(
        f"  rc={returncode} {child.get('tiles_per_s')} tiles/s, peak process "
        f"{record['peak_mb']['process_ru_maxrss']} MB, tree PSS {record['peak_mb']['sampled_tree_pss']} MB, "
        f"worker {record['peak_mb']['largest_worker_ru_maxrss']} MB, load {load_start} -> {load_end}"
    )
    if not args.keep:
        shutil.rmtree(size_dir, ignore_errors=True)
    return record


def bench_memory(args, work: Path) -> dict:
    arch, encoder = args.memory_model.split(":")
    options = submit_options(
        batch_size=args.memory_batch, workers=args.memory_workers, device="cpu", input_size=None
    )
    checkpoint_path = work / "memory_checkpoint.pt"
    catalog_checkpoint(
        random_checkpoint(arch, encoder, args.output_stride, args.memory_input_size, classes_config()),
        checkpoint_path,
    )
    records = [bench_memory_size(args, work, n, checkpoint_path, options) for n in args.memory_sizes]
    by_size = {r["tiles"]: r for r in records}
    small, large = min(by_size), max(by_size)
    growth = {
        key: (
            round(by_size[large]["peak_mb"][key] - by_size[small]["peak_mb"][key], 1)
            if by_size[large]["peak_mb"][key] is not None and by_size[small]["peak_mb"][key] is not None
            else None
        )
        for key in by_size[small]["peak_mb"]
    }
    judged = ("process_ru_maxrss", "largest_worker_ru_maxrss", "sampled_tree_pss")
    ok = all(r["returncode"] == 0 and r["entries_ok"] for r in records)
    return {
        "settings": {
            "model": {"arch": arch, "encoder": encoder, "output_stride": args.output_stride},
            "weights": "random (the figure is memory growth with the number of tiles, not accuracy)",
            "input_size": args.memory_input_size,
            "options": options,
            "why_small_model": (
                "a small model at a small input keeps 100,000 tiles within minutes on 2 CPUs; memory that "
                "grows with the number of tiles lives in the stream, pickle and zip, not in the model"
            ),
            "process": "one fresh subprocess per size: AtomicJSONDataset manifest + TorchCheckpointDataset "
            "(versioned), then predict_test_tiles -> PredictionsPickleDataset.save/.load -> "
            "make_submission -> SubmissionZipDataset.save (writes and checks the zip)",
        },
        "records": records,
        "compared": {"small": small, "large": large},
        "peak_growth_mb": growth,
        "target": f"peak({large}) - peak({small}) < {MEMORY_TARGET_MB:.0f} MB for {', '.join(judged)}",
        "target_met": ok and all(growth[k] is not None and growth[k] < MEMORY_TARGET_MB for k in judged),
        "all_runs_ok": ok,
        "memory_method": (
            "process_ru_maxrss / largest_worker_ru_maxrss: getrusage RUSAGE_SELF / RUSAGE_CHILDREN in the "
            "child at its end (largest single DataLoader worker; forked, so it counts pages shared "
            "copy-on-write with the parent). sampled_*: /proc/<pid>/smaps_rollup of the child's process "
            f"tree every {SAMPLE_INTERVAL_S} s (_common.TreeSampler): process RSS, sum of PSS over "
            "the tree (the real footprint), sum of RSS, largest worker USS. rss_timeline_mb: the child's "
            f"VmRSS every 1/{TIMELINE_POINTS} of the tiles in each phase"
        ),
    }


# --------------------------------------------------------------------------------- 2. throughput
def forward_only(model, batch: int, size: int, warmup: int, iters: int, min_seconds: float) -> dict:
    """Images/s of ``model`` on one synthetic batch, normalised on the device, under the runtime submit
    resolves from the same options (precision, memory format), eval and inference_mode."""
    import torch

    from naic_seg.core.runtime import Runtime

    options = submit_options()
    runtime = Runtime.resolve(options["device"], options["amp"], options["channels_last"])
    gen = torch.Generator().manual_seed(0)
    x = runtime.normalizer()(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen))
    model = runtime.place_model(model.eval())
    load_start = loadavg()

    def step():
        with runtime.autocast():
            model(x)

    with torch.inference_mode():
        for _ in range(warmup):
            step()
        done, cpu0, t0 = 0, cpu_seconds(), time.perf_counter()
        while done < iters or time.perf_counter() - t0 < min_seconds:
            step()
            done += 1
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {
        "img_s": round(batch * done / seconds, 3),
        "img_per_cpu_s": round(batch * done / cpu, 3),
        "iters": done,
        "warmup": warmup,
        "seconds": round(seconds, 2),
        "loadavg": {"start": load_start, "end": loadavg()},
    }


def bench_throughput_config(args, work: Path, spec: str) -> dict:
    import torch

    from naic_seg.core.models import build_model

    arch, encoder, size, batch, n_tiles = spec.split(":")
    size, batch, n_tiles = int(size), int(batch), int(n_tiles)
    label = f"{arch} {encoder} OS{args.output_stride} {size}px x{batch}"
    classes = classes_config()
    checkpoint = random_checkpoint(arch, encoder, args.output_stride, size, classes)
    model = build_model(**checkpoint["model"], pretrained=None)
    model.load_state_dict(checkpoint["state_dict"])

    def forward(note: str) -> dict:
        rec = forward_only(
            model, batch, size, args.forward_warmup, args.forward_iters, args.forward_min_seconds
        )
        log(f"  forward-only {note}: {rec['img_s']} img/s (load {rec['loadavg']})")
        return rec

    log(f"throughput {label}: forward-only ({args.forward_warmup} warm-up + >= {args.forward_iters} iters)")
    forwards = [forward("first")]
    cfg_dir = work / f"tp_{arch}_{encoder}_{size}_{batch}"
    catalog_entry = catalog_checkpoint(checkpoint, cfg_dir / "stage2_checkpoint.pt")
    built = make_linked_tree(args.rs8, cfg_dir / "tree", 0, n_tiles)
    manifest = test_manifest(cfg_dir / "tree")
    runs = []
    for workers in args.workers:
        run_dir = cfg_dir / f"workers_{workers}"
        run_dir.mkdir()
        options = submit_options(batch_size=batch, workers=workers, device="cpu", input_size=None)
        log(f"  end-to-end on {n_tiles} tiles with {workers} DataLoader worker(s)")
        load_start = loadavg()
        res = run_submit_path(run_dir, manifest, catalog_entry, classes, options)
        res.pop("rss_timeline_mb")
        res.pop("vm_hwm_after_predict_mb")
        res["workers"] = workers
        res["loadavg"] = {"start": load_start, "end": loadavg()}
        log(f"  {workers} worker(s): {res['tiles_per_s']} tiles/s (load {load_start} -> {loadavg()})")
        shutil.rmtree(run_dir, ignore_errors=True)
        # Forward-only again right after: each run is judged against the forward figures around it.
        forwards.append(forward(f"after {workers} worker(s)"))
        around = (forwards[-2]["img_s"] + forwards[-1]["img_s"]) / 2
        res["forward_img_s_around"] = round(around, 3)
        res["ratio_to_forward_around"] = round(res["tiles_per_s"] / around, 3)
        runs.append(res)
    if not args.keep:
        shutil.rmtree(cfg_dir, ignore_errors=True)

    fastest = max(f["img_s"] for f in forwards)
    fastest_cpu = max(f["img_per_cpu_s"] for f in forwards)
    best = max(runs, key=lambda r: r["tiles_per_s"])
    ratio = round(best["tiles_per_s"] / fastest, 3)
    log(
        f"  {label}: best end-to-end {best['tiles_per_s']} tiles/s ({best['workers']} worker(s)); "
        f"/ fastest forward {fastest} = {ratio}; / forward around it = {best['ratio_to_forward_around']}"
    )
    return {
        "model": {"arch": arch, "encoder": encoder, "output_stride": args.output_stride},
        "weights": "random",
        "input_size": size,
        "batch": batch,
        "tiles": n_tiles,
        "tile_size": "256x256 (rs8 test tiles, hard-linked)",
        "tree_method": built["method"],
        "torch_threads": torch.get_num_threads(),
        "forward_only": forwards,
        "end_to_end": runs,
        "best_workers": best["workers"],
        "forward_only_img_s": fastest,
        "end_to_end_img_s": best["tiles_per_s"],
        "ratio": ratio,
        "ratio_to_forward_around": best["ratio_to_forward_around"],
        "ratio_per_workers": {r["workers"]: round(r["tiles_per_s"] / fastest, 3) for r in runs},
        "ratio_cpu_time_per_workers": {
            r["workers"]: round(r["tiles_per_cpu_s"] / fastest_cpu, 3) for r in runs
        },
        "target_met": bool(ratio >= RATIO_TARGET and all(r["entries_ok"] for r in runs)),
    }


def bench_throughput(args, work: Path) -> dict:
    records = [bench_throughput_config(args, work, spec) for spec in args.throughput]
    return {
        "records": records,
        "target": f"end-to-end tiles/s >= {RATIO_TARGET} x forward-only images/s (same model and batch)",
        "target_met": all(r["target_met"] for r in records),
        "method": (
            "forward-only: model(x) on one synthetic normalised batch, eval mode, torch.inference_mode, "
            "after warm-up; measured first and again after every end-to-end run. ratio: best end-to-end "
            "over the fastest forward figure (conservative on a shared machine); ratio_to_forward_around: "
            "over the mean of the forward figures just before and after that run (same contention); "
            "ratio_cpu_time_per_workers: the same in images per CPU-second (process + workers), which "
            "other load on the machine disturbs least. end-to-end: predict_test_tiles -> "
            "PredictionsPickleDataset.save -> make_submission -> SubmissionZipDataset.save (zip + check) "
            "on N linked tiles, timed from the node call (models built from the checkpoint, DataLoader "
            "start-up included) to the checked zip; N / that time. DataLoader workers and torch's "
            "intra-op threads share the CPUs; the best worker count is used for the ratio"
        ),
    }


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_rs8_argument(ap)
    ap.add_argument("--output-stride", type=int, default=16, choices=[8, 16, 32])
    mem = ap.add_argument_group("memory")
    mem.add_argument("--skip-memory", action="store_true")
    mem.add_argument(
        "--memory-sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="test tile counts"
    )
    mem.add_argument("--memory-model", default="pspnet:resnet18", help="arch:encoder (random weights)")
    mem.add_argument("--memory-input-size", type=int, default=64)
    mem.add_argument("--memory-batch", type=int, default=32)
    mem.add_argument("--memory-workers", type=int, default=2, help="DataLoader workers (pipeline default 2)")
    tp = ap.add_argument_group("throughput")
    tp.add_argument("--skip-throughput", action="store_true")
    tp.add_argument(
        "--throughput",
        nargs="+",
        default=["pspnet:resnet50:512:4:80", "pspnet:resnet18:256:8:240"],
        metavar="ARCH:ENCODER:INPUT:BATCH:TILES",
        help="models for the ratio (default: resnet50 at 512 x4 on 80 tiles, resnet18 at 256 x8 on 240)",
    )
    tp.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers to try")
    tp.add_argument("--forward-warmup", type=int, default=2)
    tp.add_argument("--forward-iters", type=int, default=5, help="at least this many timed iterations")
    tp.add_argument("--forward-min-seconds", type=float, default=10.0, help="and at least this long")
    ap.add_argument("--tmp", type=Path, default=None, help="work dir parent (default /tmp; removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--timeout", type=float, default=3600, help="per-size limit of the memory runs (s)")
    ap.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the JSON document on stdout and return it."""
    args = parse_args(argv)
    if args.child_memory:
        _child_memory(args.child_memory)
        return {}
    import torch

    parent = args.tmp or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_submit_", dir=parent))
    log(f"work dir {work}")
    doc: dict = {
        "benchmark": "submit",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "host": {
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
        },
        "loadavg_start": loadavg(),
    }
    try:
        if not args.skip_memory:
            doc["memory"] = bench_memory(args, work)
        if not args.skip_throughput:
            doc["throughput"] = bench_throughput(args, work)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    doc["loadavg_end"] = loadavg()
    doc["targets_met"] = all(doc[k]["target_met"] for k in ("memory", "throughput") if k in doc)
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    result = main()
    sys.exit(0 if not result or result.get("targets_met") else 1)
