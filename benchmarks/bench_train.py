"""End-to-end training images/s of the engine against the compute-only ceiling, in the same run.

End-to-end: ``naic_seg.core.training.train`` itself (the engine's DataLoader over rs8 tiles, uint8 ->
device normalisation, forward, CE + 0.4 x aux CE, backward, SGD step, its per-iteration bookkeeping), on
a train manifest built from the rs8 folder directly (images and labels paired by stem; no Kedro run,
nothing under data/ or mlflow.db touched; ``work_dir`` None so no resume checkpoint is written).

Steady state: the engine times windows of ``log_interval`` iterations and hands each window's rate to
``log_fn``; ``TrainResult.images_per_s`` leaves out only the first window, whose clock starts before
the first ``next()`` on the loader (worker start-up, first decodes, first-iteration allocations).
The benchmark runs ``--warmup-iters`` iterations first (a whole number of log windows,
dropped) and reports the later windows only: images / the sum of their seconds (from the per-window rates,
cross-checked with wall-clock stamps taken in ``log_fn``). Evaluation is effectively off
(``eval_interval`` > iterations); the engine still evaluates once at the end, on a 4-tile val manifest,
after the last window is logged, so it is outside every window. The engine's own figure is reported too.

Ceiling: ``bench_models.measure`` (same model, batch, input size; forward + CE + 0.4 x aux CE, backward,
SGD step with the engine's momentum / weight decay, on one in-memory batch repeated), measured before and
after the end-to-end run in the same process; the ratio uses the higher of the two (conservative when
the machine is shared: see the load averages). Target: end-to-end / ceiling >= 0.9.

GPU section (only when ``torch.cuda.is_available()``; otherwise ``{"gpu": "not available"}``): PSPNet
``tu-resnet101d`` at 512x512, output stride 16 and 8, bf16 autocast, channels-last: training and prediction
(eval mode, ``torch.inference_mode``) images/s from ``measure``, and the engine end-to-end at stride 16
with the same switches against that ceiling.

    .venv/bin/python -m benchmarks.bench_train > bench_train.json
    .venv/bin/python -m benchmarks.bench_train --encoder resnet50 --size 512

One JSON document goes to stdout, progress to stderr; ``collect(argv) -> dict`` returns it unprinted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch

from benchmarks._common import add_rs8_argument, host_info, loadavg, rs8_manifest, set_threads
from benchmarks._models import measure
from naic_seg.core.labels import ClassTable
from naic_seg.core.training import TrainConfig, train

RATIO_TARGET = 0.9
NUM_CLASSES = 8


def log(msg: str) -> None:
    print(f"[bench_train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def engine_run(
    model_config: dict,
    cfg_overrides: dict,
    train_manifest: list[dict],
    val_manifest: list[dict],
    warmup_iters: int,
    timed_iters: int,
    log_interval: int,
) -> dict:
    """One ``train`` call; the per-window rates after the warm-up windows give the steady rate."""
    warmup_iters = _round_up(max(warmup_iters, 1), log_interval)
    timed_iters = _round_up(max(timed_iters, 1), log_interval)
    iterations = warmup_iters + timed_iters
    cfg = TrainConfig(
        iterations=iterations,
        log_interval=log_interval,
        eval_interval=iterations + 1,  # the engine still evaluates once at the end, after the last window
        checkpoint_interval=10**9,
        work_dir=None,
        resume=False,
        grid_tiles=0,
        **cfg_overrides,
    )
    windows: list[dict] = []

    def log_fn(metrics: dict, step: int) -> None:
        if "images_per_s" in metrics:
            windows.append({"step": step, "img_s": metrics["images_per_s"], "stamp": time.perf_counter()})

    classes = ClassTable.naic()
    t0 = time.perf_counter()
    result = train(model_config, cfg, train_manifest, val_manifest, classes, log_fn=log_fn)
    total = time.perf_counter() - t0
    if len(windows) != iterations // log_interval:
        raise RuntimeError(f"expected {iterations // log_interval} log windows, got {len(windows)}")

    per_window_images = log_interval * cfg.batch_size
    n_warm = warmup_iters // log_interval
    steady = windows[n_warm:]
    steady_seconds = sum(per_window_images / w["img_s"] for w in steady)
    steady_images = per_window_images * len(steady)
    # Cross-check: wall clock between the log_fn calls that bound the steady windows.
    stamped_seconds = steady[-1]["stamp"] - windows[n_warm - 1]["stamp"]
    first_window_s = per_window_images / windows[0]["img_s"]
    return {
        "iterations": iterations,
        "warmup_iters": warmup_iters,
        "timed_iters": timed_iters,
        "log_interval": log_interval,
        "workers": cfg.workers,
        "window_img_s": [round(w["img_s"], 4) for w in windows],
        "steady_img_s": round(steady_images / steady_seconds, 4),
        "steady_img_s_wall_stamps": round(steady_images / stamped_seconds, 4),
        "steady_seconds": round(steady_seconds, 3),
        "first_window_img_s": round(windows[0]["img_s"], 4),
        "first_window_seconds": round(first_window_s, 3),
        "engine_images_per_s": round(result.images_per_s, 4),  # TrainResult: the first window left out
        "engine_train_seconds": round(result.train_seconds, 3),
        "train_call_seconds": round(total, 3),
        "outside_windows_seconds": round(total - result.train_seconds, 3),
    }


def ceiling(model_config: dict, size: int, batch: int, iters: int, warmup: int, device, amp, cl) -> dict:
    rec = measure(
        model_config["arch"],
        model_config["encoder"],
        model_config["output_stride"],
        size,
        batch,
        iters=iters,
        warmup=warmup,
        device=device,
        amp=amp,
        channels_last=cl,
    )
    keep = ("train_img_s", "infer_img_s", "train_s_per_iter", "iters", "warmup", "dtype", "channels_last")
    return {k: rec[k] for k in keep} | {"peak_mem_mb": rec["peak_mem_mb"], "loadavg": loadavg()}


def compare(
    label: str,
    model_config: dict,
    cfg_overrides: dict,
    train_manifest: list[dict],
    val_manifest: list[dict],
    args_e2e: dict,
    args_ceiling: dict,
) -> dict:
    """Ceiling, end-to-end, ceiling again; the ratio against the higher ceiling."""
    size, batch = cfg_overrides["input_size"], cfg_overrides["batch_size"]
    dev = cfg_overrides["device"]
    amp = {"none": "none", "bf16": "bf16"}[cfg_overrides["amp"]]
    cl = bool(cfg_overrides["channels_last"])
    log(f"{label}: compute-only ceiling (before) ... load {loadavg()}")
    before = ceiling(model_config, size, batch, device=dev, amp=amp, cl=cl, **args_ceiling)
    log(f"  ceiling before: {before['train_img_s']} img/s")
    log(
        f"{label}: engine end-to-end "
        f"({args_e2e['warmup_iters']} warm-up + {args_e2e['timed_iters']} timed iterations) ..."
    )
    e2e = engine_run(model_config, cfg_overrides, train_manifest, val_manifest, **args_e2e)
    e2e["loadavg"] = loadavg()
    log(
        f"  end-to-end steady: {e2e['steady_img_s']} img/s (engine's own figure {e2e['engine_images_per_s']})"
    )
    after = ceiling(model_config, size, batch, device=dev, amp=amp, cl=cl, **args_ceiling)
    log(f"  ceiling after: {after['train_img_s']} img/s")
    best = max(before["train_img_s"], after["train_img_s"])
    mean = (before["train_img_s"] + after["train_img_s"]) / 2
    ratio = round(e2e["steady_img_s"] / best, 3)
    log(f"{label}: ratio {e2e['steady_img_s']} / {best} = {ratio}")
    return {
        "model": model_config,
        "input_size": size,
        "batch": batch,
        "device": dev,
        "amp": cfg_overrides["amp"],
        "channels_last": cl,
        "ceiling": {"before": before, "after": after, "train_img_s_used": best},
        "end_to_end": e2e,
        "ratio": ratio,
        "ratio_to_mean_ceiling": round(e2e["steady_img_s"] / mean, 3),
        "ratio_engine_figure": round(e2e["engine_images_per_s"] / best, 3),
        "target": f"steady end-to-end / ceiling >= {RATIO_TARGET}",
        "target_met": ratio >= RATIO_TARGET,
    }


def gpu_section(args, train_manifest: list[dict], val_manifest: list[dict]) -> dict:
    if not torch.cuda.is_available():
        return {"gpu": "not available"}
    doc: dict = {"gpu": torch.cuda.get_device_name(0), "models": []}
    for stride in (16, 8):
        log(
            f"GPU: PSPNet {args.gpu_encoder} OS{stride} {args.gpu_size}px x{args.gpu_batch}, "
            "bf16, channels-last"
        )
        try:
            rec = measure(
                "pspnet",
                args.gpu_encoder,
                stride,
                args.gpu_size,
                args.gpu_batch,
                iters=args.gpu_iters,
                warmup=args.gpu_warmup,
                device="cuda",
                amp="bf16",
                channels_last=True,
            )
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            rec = {"stride": stride, "error": str(exc)[:500]}
        doc["models"].append(rec)
    if args.gpu_e2e_iters > 0:
        model_config = {
            "arch": "pspnet",
            "encoder": args.gpu_encoder,
            "num_classes": NUM_CLASSES,
            "output_stride": 16,
            "pretrained": None,
        }
        overrides = {
            "batch_size": args.gpu_batch,
            "input_size": args.gpu_size,
            "workers": args.gpu_workers,
            "device": "cuda",
            "amp": "bf16",
            "channels_last": True,
            "cudnn_benchmark": True,
        }
        doc["end_to_end"] = compare(
            "GPU end-to-end",
            model_config,
            overrides,
            train_manifest,
            val_manifest,
            {"warmup_iters": args.gpu_warmup * 2, "timed_iters": args.gpu_e2e_iters, "log_interval": 10},
            {"iters": args.gpu_iters, "warmup": args.gpu_warmup},
        )
    return doc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_rs8_argument(ap)
    ap.add_argument("--train-tiles", type=int, default=None, help="first N rs8 train tiles (default: all)")
    ap.add_argument("--val-tiles", type=int, default=4, help="rs8 test tiles for the one final evaluation")
    ap.add_argument("--arch", default="pspnet", choices=["pspnet", "deeplabv3plus"])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--stride", type=int, default=16, choices=[8, 16, 32])
    ap.add_argument("--size", type=int, default=256, help="input size (default 256: rs8 tiles, no resize)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (TrainConfig default 2)")
    ap.add_argument("--iters", type=int, default=20, help="timed iterations (rounded up to log windows)")
    ap.add_argument("--warmup-iters", type=int, default=5, help="dropped iterations (rounded up likewise)")
    ap.add_argument("--log-interval", type=int, default=5)
    ap.add_argument("--ceiling-iters", type=int, default=6, help="compute-only timed iterations, each side")
    ap.add_argument("--ceiling-warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the main comparison's device")
    gpu = ap.add_argument_group("GPU section (only when CUDA is available)")
    gpu.add_argument("--skip-gpu", action="store_true")
    gpu.add_argument("--gpu-encoder", default="tu-resnet101d")
    gpu.add_argument("--gpu-size", type=int, default=512)
    gpu.add_argument("--gpu-batch", type=int, default=4, help="per device, as the reference (4 x 4 GPUs)")
    gpu.add_argument("--gpu-iters", type=int, default=20)
    gpu.add_argument("--gpu-warmup", type=int, default=5)
    gpu.add_argument("--gpu-workers", type=int, default=2)
    gpu.add_argument("--gpu-e2e-iters", type=int, default=40, help="0 skips the GPU end-to-end run")
    return ap.parse_args(argv)


def collect(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    set_threads(args.threads)
    doc: dict = {"benchmark": "train", "loadavg_start": loadavg(), "host": host_info()}
    train_manifest = rs8_manifest(args.rs8, "train", args.train_tiles)
    val_split = "test" if (args.rs8 / "test" / "labels").is_dir() else "train"
    val_manifest = rs8_manifest(args.rs8, val_split, args.val_tiles)
    model_config = {
        "arch": args.arch,
        "encoder": args.encoder,
        "num_classes": NUM_CLASSES,
        "output_stride": args.stride,
        "pretrained": None,
    }
    overrides = {
        "batch_size": args.batch,
        "input_size": args.size,
        "workers": args.workers,
        "device": args.device,
        "amp": "none",
        "channels_last": False,
        "cudnn_benchmark": args.device == "cuda",
    }
    doc["settings"] = {
        "rs8": str(args.rs8),
        "train_tiles": len(train_manifest),
        "val_tiles": len(val_manifest),
        "val_split": f"{val_split} (one evaluation at the end, outside the timed windows)",
        "weights": "random (pretrained: null)",
    }
    log(f"{len(train_manifest)} train tiles, {len(val_manifest)} val tiles, load {loadavg()}")
    doc["cpu" if args.device == "cpu" else "cuda"] = compare(
        f"{args.arch} {args.encoder} OS{args.stride} {args.size}px x{args.batch} on {args.device}",
        model_config,
        overrides,
        train_manifest,
        val_manifest,
        {"warmup_iters": args.warmup_iters, "timed_iters": args.iters, "log_interval": args.log_interval},
        {"iters": args.ceiling_iters, "warmup": args.ceiling_warmup},
    )
    doc["gpu"] = (
        {"gpu": "skipped (--skip-gpu)"} if args.skip_gpu else gpu_section(args, train_manifest, val_manifest)
    )
    doc["loadavg_end"] = loadavg()
    doc["engine_reporting"] = (
        "TrainResult.images_per_s = the log windows after the first (whose clock includes DataLoader "
        "worker start-up and first decodes). steady_img_s drops all --warmup-iters windows, using the "
        "per-window rates the engine passes to log_fn."
    )
    return doc


def main(argv: list[str] | None = None) -> dict:
    doc = collect(argv)
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    main()
