"""Benchmark map_scenes and submit on a Dask LocalCluster against in-process, on this machine. Prints JSON.

1. **Throughput**: ``--scenes`` synthetic scenes of ``--scene-px`` a side mapped in-process (this
   process's torch threads) vs ``local:2`` (2 workers x 1 thread) vs ``local:1`` (1 worker x cores threads,
   one task per thread), with a random PSPNet / ResNet-18 checkpoint (``--input-size`` px input, windows of
   twice that): megapixels/s of the mapping itself (cluster start-up apart) and the ratio to in-process.
2. **Overhead**: the local cluster's start-up seconds (``connect``), and the per-task cost of no-op tasks,
   both pipelined (``--noop-tasks`` at once) and as a round trip (one at a time).
3. **Memory**: a ``--memory-px``² scene mapped on ``local:2`` in bands (``split_above_mpx`` 100) with the
   smallest model the checkpoint format builds (PSPNet / ResNet-18 at a 32 px input: cheap forward passes,
   so the blend dominates), the peak RSS (VmHWM) of each worker, the client's join seconds.
4. **submit**: ``--tiles`` tiny tiles (``--tile-px``) predicted into the pickle in-process vs on ``local:2``,
   each run in a child process: wall seconds and the child's (the client's) peak RSS.
5. **Projection** for 10 and 100 workers from the per-worker rate and the per-task cost (docs/distributed.md).

    .venv/bin/python -m benchmarks.bench_distributed > bench_distributed.json
    .venv/bin/python -m benchmarks.bench_distributed --quick

``main(argv) -> dict`` is importable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import cpu_model, loadavg

PIXEL_M = 0.5
MODEL = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}
PREDICT = {"engine": "torch", "device": "cpu", "amp": "none", "channels_last": False, "batch_size": 8}
# Dask's documentation: "Each task suffers about 1ms of overhead" (distributed.dask.org); the scheduler is
# one Python process, so about 1,000 task transitions a second is its order of magnitude.
SCHEDULER_TASKS_PER_S = 1000.0
BAND_MPX = 100.0  # split_above_mpx's default: the size of a task


def peak_rss_kb() -> int:
    """This process's peak RSS; run on the workers too (a function of a script travels to them by value)."""
    with open("/proc/self/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("VmHWM:")))


def log(msg: str) -> None:
    print(f"[bench_distributed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_scene(path: Path, side: int, seed: int = 0, block: int = 512) -> Path:
    """A side² 3-band uint8 GeoTIFF at 0.5 m, written block by block from a few noisy blocks (cheap to make
    at 20,000², never whole in memory)."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    blocks = rng.integers(1, 256, size=(4, 3, block, block), dtype=np.uint8)
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 3,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "crs": CRS.from_epsg(32650),
        "BIGTIFF": "IF_SAFER",
        "transform": from_origin(300_000.0, 4_000_000.0, PIXEL_M, PIXEL_M),
    }
    with rasterio.open(path, "w", **profile) as dst:
        for i, y in enumerate(range(0, side, block)):
            for j, x in enumerate(range(0, side, block)):
                h, w = min(block, side - y), min(block, side - x)
                dst.write(blocks[(i + j) % 4][:, :h, :w], window=Window(x, y, w, h))
    return path


def random_checkpoint(path: Path, input_size: int, tile_size: int) -> Path:
    from naic_seg.core.checkpoint import make_checkpoint, save_checkpoint
    from naic_seg.core.labels import ClassTable
    from naic_seg.core.models import build_model

    torch.manual_seed(0)
    preprocess = {"input_size": input_size, "tile_size": tile_size}
    classes = ClassTable.naic().as_config()
    save_checkpoint(
        make_checkpoint(MODEL, build_model(**MODEL).state_dict(), 1, {}, classes, "s", preprocess), path
    )
    return path


def map_in_process(scenes, out: Path, ckpt: Path, window: int) -> float:
    from naic_seg.core.checkpoint import load_checkpoint
    from naic_seg.core.labels import ClassTable
    from naic_seg.core.predict import PredictConfig, Predictor
    from naic_seg.core.scenes import SceneOptions, map_scene

    classes = ClassTable.naic()
    predictor = Predictor.from_checkpoints([load_checkpoint(ckpt)], PredictConfig(**PREDICT), classes)
    opts = SceneOptions(window=window, batch_size=PREDICT["batch_size"], progress_every_s=60)
    started = time.perf_counter()
    for scene in scenes:
        map_scene(scene, out / scene.name, predictor.window_logits, classes, opts)
    return time.perf_counter() - started


def map_on_cluster(scenes, out: Path, ckpt: Path, window: int, address: str, split=None) -> dict:
    """Start-up seconds, mapping seconds, the mapper (for its client) and each scene write's seconds."""
    from naic_seg.core.checkpoint import load_checkpoint
    from naic_seg.core.distributed import MapDistributed, ModelSpec, worker_predictor
    from naic_seg.core.distributed_map import DistributedSceneMapper
    from naic_seg.core.labels import ClassTable
    from naic_seg.core.predict import PredictConfig
    from naic_seg.core.scenes import SceneOptions, check_scenes

    opts = SceneOptions(window=window, batch_size=PREDICT["batch_size"], progress_every_s=60)
    spec = ModelSpec.of([load_checkpoint(ckpt)], PredictConfig(**PREDICT), ClassTable.naic())
    t0 = time.perf_counter()
    mapper = DistributedSceneMapper(
        check_scenes(scenes, opts), spec, opts, MapDistributed(address, split_above_mpx=split)
    )
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()  # each worker builds its predictor once, before the timed mapping
    mapper.client.run(worker_predictor, spec)
    warm_up = time.perf_counter() - t0
    peaks, writes, joins = {}, [], [None]
    t1 = time.perf_counter()
    for name, write in mapper.pairs():
        tw = time.perf_counter()
        result = write(out / f"{name}.tif")
        writes.append(time.perf_counter() - tw)
        if name == scenes[-1].stem:  # before the generator closes the cluster: each worker's peak RSS
            peaks = mapper.client.run(peak_rss_kb)
            joins = [result.extra.get("join_s")]
    return {
        "startup_s": startup,
        "predictor_build_s": warm_up,
        "map_s": time.perf_counter() - t1,
        "writes_s": writes,
        "worker_peak_kb": peaks,
        "join_s": joins[0],
    }


def bench_throughput(args, work: Path) -> dict:
    ckpt = random_checkpoint(work / "tput.pt", args.input_size, 2 * args.input_size)
    scenes = [write_scene(work / f"tput_{i}.tif", args.scene_px, seed=i) for i in range(args.scenes)]
    mpx = args.scenes * args.scene_px**2 / 1e6
    window = 2 * args.input_size
    rows = {}
    for mode in ("in_process", "local:2", "local:1"):
        out = work / f"out_{mode.replace(':', '_')}"
        out.mkdir()
        if mode == "in_process":
            rows[mode] = {
                "threads": torch.get_num_threads(),
                "map_s": map_in_process(scenes, out, ckpt, window),
            }
        else:
            run = map_on_cluster(scenes, out, ckpt, window, mode)
            rows[mode] = {k: run[k] for k in ("startup_s", "predictor_build_s", "map_s")}
        rows[mode]["mpx_per_s"] = mpx / rows[mode]["map_s"]
        log(f"throughput {mode}: {rows[mode]}")
    base = rows["in_process"]["mpx_per_s"]
    same = all(_same_maps(work / "out_in_process", work / f"out_local_{n}", scenes) for n in (1, 2))
    for row in rows.values():
        row["ratio_to_in_process"] = row["mpx_per_s"] / base
    return {
        "scenes": args.scenes,
        "scene_px": args.scene_px,
        "megapixels": mpx,
        "window": window,
        "model": f"random PSPNet/ResNet-18, {args.input_size} px input",
        "rows": rows,
        "maps_identical_to_in_process": same,
    }


def _same_maps(a: Path, b: Path, scenes) -> bool:
    import rasterio

    for scene in scenes:
        with rasterio.open(a / scene.name) as x, rasterio.open(b / scene.name) as y:
            if not np.array_equal(x.read(1), y.read(1)):
                return False
    return True


def _noop(i):
    return i


def bench_overhead(args) -> dict:
    from naic_seg.core.distributed import ClusterOptions, connect

    t0 = time.perf_counter()
    with connect(ClusterOptions(address="local:2")) as client:
        startup = time.perf_counter() - t0
        client.gather(client.map(_noop, range(20), pure=False))  # warm
        t1 = time.perf_counter()
        client.gather(client.map(_noop, range(args.noop_tasks), pure=False))
        pipelined = (time.perf_counter() - t1) / args.noop_tasks
        t2 = time.perf_counter()
        for i in range(args.noop_round_trips):
            client.submit(_noop, i, pure=False).result()
        round_trip = (time.perf_counter() - t2) / args.noop_round_trips
    return {
        "local_2_startup_s": startup,
        "noop_tasks": args.noop_tasks,
        "per_task_pipelined_ms": pipelined * 1e3,
        "per_task_round_trip_ms": round_trip * 1e3,
    }


def bench_memory(args, work: Path) -> dict:
    ckpt = random_checkpoint(work / "mem.pt", 32, 256)
    t0 = time.perf_counter()
    scene = write_scene(work / "memory.tif", args.memory_px)
    log(f"memory: {args.memory_px}² scene written in {time.perf_counter() - t0:.0f} s, mapping on local:2")
    out = work / "out_memory"
    out.mkdir()
    run = map_on_cluster([scene], out, ckpt, 256, "local:2", split=100.0)
    mpx = args.memory_px**2 / 1e6
    return {
        "scene_px": args.memory_px,
        "model": "random PSPNet/ResNet-18 at a 32 px input, windows of 256 px",
        "split_above_mpx": 100.0,
        "bands": int(np.ceil(mpx / 100.0)),
        "startup_s": run["startup_s"],
        "map_s": run["map_s"],
        "mpx_per_s": mpx / run["map_s"],
        "client_join_s": run["join_s"],
        "worker_peak_rss_mb": sorted(round(kb / 1024, 1) for kb in run["worker_peak_kb"].values()),
    }


CHILD = """
import json, sys, time
from naic_seg.core.checkpoint import load_checkpoint
from naic_seg.core.labels import ClassTable
from naic_seg.core.predict import PredictConfig, Predictor, predict_tiles
from naic_seg.core.submission import prediction_records, write_predictions
address, ckpt, manifest, out = sys.argv[1:5]
entries = json.load(open(manifest))
cfg = PredictConfig(**json.loads(sys.argv[5]))
checkpoints, classes = [load_checkpoint(ckpt)], ClassTable.naic()
t0 = time.perf_counter()
if address == "in_process":
    predictor = Predictor.from_checkpoints(checkpoints, cfg, classes)
    records = prediction_records(predict_tiles(entries, predictor))
else:
    from naic_seg.core.distributed import ModelSpec, SubmitDistributed
    from naic_seg.core.distributed_submit import distributed_records
    spec = ModelSpec.of(checkpoints, cfg, classes)
    records = distributed_records(entries, spec, SubmitDistributed(address=address))
n = write_predictions(out, records)
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"seconds": time.perf_counter() - t0, "tiles": n, "client_peak_rss_mb": hwm / 1024}))
"""


def bench_submit(args, work: Path) -> dict:
    from PIL import Image

    ckpt = random_checkpoint(work / "submit.pt", 32, args.tile_px)
    folder = work / "tiles"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(16, args.tile_px, args.tile_px, 3), dtype=np.uint8)
    entries = []
    for i in range(args.tiles):
        path = folder / f"{100000 + i}.tif"
        Image.fromarray(base[i % 16]).save(path)
        entries.append({"filename": str(path), "size": [args.tile_px, args.tile_px]})
    (work / "manifest.json").write_text(json.dumps(entries))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]),
    }
    rows = {}
    for mode in ("in_process", "local:2"):
        cfg = {**PREDICT, "batch_size": 32, "workers": 2 if mode == "in_process" else 0}
        cmd = [sys.executable, "-c", CHILD, mode, str(ckpt), str(work / "manifest.json")]
        cmd += [str(work / f"{mode.replace(':', '_')}.pkl"), json.dumps(cfg)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=args.timeout, env=env)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1]) | {"wall_s": time.perf_counter() - t0}
        log(f"submit {mode}: {rows[mode]}")
    same = (work / "in_process.pkl").read_bytes() == (work / "local_2.pkl").read_bytes()
    return {
        "tiles": args.tiles,
        "tile_px": args.tile_px,
        "model": "random PSPNet/ResNet-18, 32 px input",
        "chunk_size": 512,
        "max_in_flight": 8,
        "rows": rows,
        "pickles_identical": same,
    }


def projection(tput: dict, overhead: dict, memory: dict) -> dict:
    """km²/h at 0.5 m for N workers: N x the per-worker rate of local:2, against what caps it: the
    scheduler's task rate (tasks of 100 Mpx), the storage reads (3 bytes a pixel, uncompressed: an upper
    bound) and the client's join of one split scene (measured)."""
    per_worker = tput["rows"]["local:2"]["mpx_per_s"] / 2
    task_s = BAND_MPX / per_worker
    join_mpx_s = (
        memory["scene_px"] ** 2 / 1e6 / memory["client_join_s"] if memory.get("client_join_s") else None
    )
    rows = {}
    for n in (10, 100):
        mpx_s = n * per_worker
        rows[str(n)] = {
            "mpx_per_s": mpx_s,
            "km2_per_h": mpx_s * PIXEL_M**2 * 3600,
            "tasks_per_s": n / task_s,
            "scheduler_busy_share": n / task_s / SCHEDULER_TASKS_PER_S,
            "task_overhead_share": overhead["per_task_round_trip_ms"] / 1e3 / task_s,
            "storage_read_mb_per_s": mpx_s * 3,
        }
    return {
        "per_worker_mpx_per_s": per_worker,
        "task_s": task_s,
        "client_join_mpx_per_s": join_mpx_s,
        "scheduler_tasks_per_s": SCHEDULER_TASKS_PER_S,
        "workers": rows,
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--scene-px", type=int, default=1500)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--memory-px", type=int, default=20000)
    ap.add_argument("--tiles", type=int, default=10000)
    ap.add_argument("--tile-px", type=int, default=16)
    ap.add_argument("--noop-tasks", type=int, default=1000)
    ap.add_argument("--noop-round-trips", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of seconds")
    args = ap.parse_args(argv)
    if args.quick:
        args.scenes, args.scene_px, args.memory_px, args.tiles = 2, 300, 1200, 300
        args.noop_tasks, args.noop_round_trips = 50, 10
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = {
        "benchmark": "distributed",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_before": loadavg(),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    with tempfile.TemporaryDirectory(prefix="bench_distributed.") as tmp:
        work = Path(tmp)
        result["overhead"] = bench_overhead(args)
        log(f"overhead: {result['overhead']}")
        result["throughput"] = bench_throughput(args, work)
        result["memory"] = bench_memory(args, work)
        log(f"memory: {result['memory']}")
        result["submit"] = bench_submit(args, work)
    result["projection"] = projection(result["throughput"], result["overhead"], result["memory"])
    result["load_after"] = loadavg()
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
