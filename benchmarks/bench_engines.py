"""The prediction engines measured: forward-only ceilings, submit and scene mapping end to end, the served
model's latency, and how often the engines' classes differ on the rs8 test tiles.

    .venv/bin/python -m benchmarks.bench_engines --checkpoint CKPT > engines.json

Sections (``--only`` picks some):

* ``forward``: images/s at batch 1 and 8 of each engine and precision this CPU offers (torch float32,
  float32 channels-last, bf16 autocast + channels-last where bf16 is native; ONNX Runtime float32 with the
  cached dynamic-batch graph, and a static batch-1 graph fed one image at a time) for ``--models`` (random
  weights: speed does not depend on them) and for the checkpoint;
* ``submit``: ``predict_tiles`` over the rs8 test tiles (``--submit-repeat`` times), tiles/s per engine
  against that engine's forward-only rate at the batch size (the ceiling);
* ``scenes``: ``map_scene`` over ``--scene`` per engine, km²/h at 50 cm, against forward-only on the same
  number of windows;
* ``serving``: the MLflow pyfunc model in-process (one 256-px tile, a batch of 16) per engine;
* ``agreement``: classes of torch float32 / torch auto vs ONNX Runtime on every rs8 test tile: pixels that
  differ, and of those how many have top-two logits more than 1e-3 apart.

Without ``--checkpoint`` the rs8 recipe's network is used with its ImageNet encoder and a seeded random head.
Run it alone on the machine: with 2 cores anything else running skews every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks._common import add_rs8_argument, cpu_model, loadavg
from naic_seg.core import export
from naic_seg.core.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from naic_seg.core.data import resize_image
from naic_seg.core.engines import OnnxNetwork, TorchNetwork, onnx_providers
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.predict import PredictConfig, Predictor, load_models, predict_tiles
from naic_seg.core.runtime import Runtime, cpu_bf16_support

TABLE = ClassTable.naic()
SECTIONS = ("forward", "submit", "scenes", "serving", "agreement")
LITE_NORM = {"mean": [0.5] * 3, "std": [0.5] * 3}


def log(msg: str) -> None:
    print(f"[bench_engines] {msg}", file=sys.stderr, flush=True)


def model_checkpoint(spec: str, work: Path, pretrained: str | None = None) -> dict:
    """``arch:encoder:size`` as a saved checkpoint (random weights unless ``pretrained``)."""
    arch, encoder, size = spec.split(":")
    torch.manual_seed(0)
    config = {"arch": arch, "encoder": encoder, "num_classes": 8, "output_stride": 16}
    model = build_model(**config, pretrained=pretrained)
    pre = {"input_size": int(size), "tile_size": 256}
    if "lite" in encoder:
        pre["normalization"] = LITE_NORM
    path = work / f"{arch}_{encoder}_{size}.pt".replace("-", "_")
    save_checkpoint(make_checkpoint(config, model.state_dict(), 1, None, TABLE.as_config(), "s", pre), path)
    return load_checkpoint(path)


def rate(fn, n_images: int, min_seconds: float, warmup: int = 2) -> float:
    """Images/s of ``fn``: median of timed calls after ``warmup``, at least 3 and ``min_seconds`` long."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times, started = [], time.perf_counter()
        while len(times) < 3 or time.perf_counter() - started < min_seconds:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return n_images / statistics.median(times)


def engine_variants(ckpt: dict, work: Path) -> dict:
    """name -> network callable, for every engine and precision this CPU offers."""
    cpu = torch.device("cpu")
    variants = {}
    layouts = [("float32", None, False), ("float32 channels-last", None, True)]
    if cpu_bf16_support()[0]:
        layouts.append(("bf16 channels-last", torch.bfloat16, True))
    for name, dtype, cl in layouts:
        runtime = Runtime(cpu, dtype, cl)
        variants[f"torch {name}"] = TorchNetwork(load_models([ckpt], runtime)[0], runtime)
    threads, providers = torch.get_num_threads(), onnx_providers(Runtime(cpu, None, False))
    variants["onnxruntime float32"] = OnnxNetwork(lambda s: export.cached_onnx(ckpt, s), threads, providers)
    static = work / f"static_{Path(ckpt['source']).stem}.onnx"
    export.export_onnx(ckpt, static, dynamic_batch=False)
    variants["onnxruntime float32, static batch 1"] = OnnxNetwork(lambda s: static, threads, providers)
    return variants


def bench_forward(ckpt: dict, work: Path, args) -> dict:
    size = ckpt["preprocess"]["input_size"]
    out = {}
    for name, network in engine_variants(ckpt, work).items():
        row = {}
        for batch in (1, 8):
            x = torch.randn(batch, 3, size, size)
            if "static" in name:  # the batch-1 graph takes the batch one image at a time
                call = partial(lambda net, x: [net(x[i : i + 1]) for i in range(len(x))], network, x)
            else:
                call = partial(network, x)
            row[f"batch{batch}"] = rate(call, batch, args.min_seconds)
        log(f"forward {ckpt['model']['encoder']} {size}px {name}: {row}")
        out[name] = {k: round(v, 1) for k, v in row.items()}
    return out


def engines_to_compare() -> list[tuple[str, dict]]:
    """(label, PredictConfig overrides): torch under auto's precision, torch float32 where that differs,
    ONNX Runtime, and auto itself."""
    rows = [("torch auto precision", {"engine": "torch"})]
    if cpu_bf16_support()[0]:
        rows.append(("torch float32", {"engine": "torch", "amp": "none"}))
    return [*rows, ("onnxruntime", {"engine": "onnxruntime"}), ("auto", {"engine": "auto"})]


def rs8_test_tiles(rs8: Path, size: int | None = None) -> list:
    files = sorted((rs8 / "test" / "images").glob("*.tif"))
    if size is None:
        return [{"filename": str(f)} for f in files]
    return [resize_image(np.asarray(Image.open(f).convert("RGB")), size) for f in files]


def ceiling(predictor: Predictor, batch: int, min_seconds: float) -> float:
    """The predictor's own forward-only rate on in-memory batches at its input size."""
    size = predictor.input_size
    x = predictor.prepare(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8))
    return rate(lambda: predictor.logits(x), batch, min_seconds)


def bench_submit(ckpt: dict, args) -> dict:
    manifest = rs8_test_tiles(args.rs8) * args.submit_repeat
    out = {}
    for label, overrides in engines_to_compare():
        cfg = PredictConfig(batch_size=args.batch, workers=args.workers, **overrides)
        predictor = Predictor.from_checkpoints([ckpt], cfg, TABLE)
        started = time.perf_counter()
        n = sum(1 for _ in predict_tiles(manifest, predictor, progress_every=0))
        tiles_s = n / (time.perf_counter() - started)
        top = ceiling(predictor, args.batch, args.min_seconds)
        out[label] = {
            "engine": predictor.engine.describe(),
            "tiles_per_s": round(tiles_s, 1),
            "forward_only_per_s": round(top, 1),
            "ratio": round(tiles_s / top, 3),
        }
        log(f"submit {label}: {out[label]}")
    return out


def bench_scenes(ckpt: dict, args, work: Path) -> dict:
    import rasterio

    from naic_seg.core.scenes import SceneOptions, map_scene

    with rasterio.open(args.scene) as src:
        pixels = src.width * src.height
    out = {}
    for label, overrides in engines_to_compare():
        predictor = Predictor.from_checkpoints(
            [ckpt], PredictConfig(batch_size=args.batch, **overrides), TABLE
        )
        calls = []

        def counted(images, predictor=predictor, calls=calls):
            calls.append(len(images))
            return predictor.window_logits(images)

        opts = SceneOptions(
            window=ckpt["preprocess"]["tile_size"], overlap=args.overlap, batch_size=args.batch
        )
        started = time.perf_counter()
        map_scene(args.scene, work / f"map_{label.replace(' ', '_')}.tif", counted, TABLE, opts)
        elapsed = time.perf_counter() - started
        window = opts.window
        batch = torch.randint(0, 256, (args.batch, 3, window, window), dtype=torch.uint8)
        forward = rate(lambda b=batch, p=predictor: p.window_logits(b), args.batch, args.min_seconds)
        mpx_s = pixels / elapsed / 1e6
        out[label] = {
            "engine": predictor.engine.describe(),
            "seconds": round(elapsed, 2),
            "megapixels_per_s": round(mpx_s, 3),
            "km2_per_h_at_50cm": round(mpx_s * 0.25 * 3600, 0),
            "ratio_to_forward_only": round(sum(calls) / forward / elapsed, 3),
        }
        log(f"scenes {label}: {out[label]}")
    return out


def bench_serving(ckpt: dict, args, work: Path) -> dict:
    import pandas as pd

    from naic_seg.mlflow_model import SegmentationModel, encode_image, onnx_artifacts

    tiles = [np.asarray(Image.open(f["filename"]).convert("RGB")) for f in rs8_test_tiles(args.rs8)[:16]]
    artifacts = {"checkpoint_0": ckpt["source"]} | onnx_artifacts([ckpt], "none", tiles[0], work)
    out = {}
    for engine in ("torch", "onnxruntime", "auto"):
        options = work / f"options_{engine}.json"
        options.write_text(json.dumps({"tta": "none", "output_values": "naic", "engine": engine}))
        model = SegmentationModel()
        model.load_context(type("Context", (), {"artifacts": artifacts | {"options": str(options)}})())
        one = pd.DataFrame({"image": [encode_image(tiles[0])]})
        batch = pd.DataFrame({"image": [encode_image(t) for t in tiles]})
        out[engine] = {
            "engine": model.predictor.engine.describe(),
            "one_tile_ms": round(1000 / rate(partial(model.predict, None, one), 1, args.min_seconds), 1),
            "batch16_ms": round(16000 / rate(partial(model.predict, None, batch), 16, args.min_seconds), 1),
        }
        log(f"serving {engine}: {out[engine]}")
    return out


def bench_agreement(ckpt: dict, args) -> dict:
    size = ckpt["preprocess"]["input_size"]
    x = torch.from_numpy(np.stack(rs8_test_tiles(args.rs8, size)).transpose(0, 3, 1, 2).copy())
    logits = {}
    for label, overrides in engines_to_compare()[:-1]:
        predictor = Predictor.from_checkpoints([ckpt], PredictConfig(**overrides), TABLE)
        logits[label] = torch.cat([predictor.window_logits(b) for b in x.split(16)])
    reference = logits["onnxruntime"]
    top2 = reference.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    out = {"pixels": int(reference[:, 0].numel()), "tiles": len(x)}
    for label, value in logits.items():
        if label != "onnxruntime":
            differ = value.argmax(1) != reference.argmax(1)
            out[f"{label} vs onnxruntime"] = {
                "differing_pixels": int(differ.sum()),
                "differing_beyond_1e-3": int((differ & clear).sum()),
                "identical_share": round(1 - float(differ.float().mean()), 6),
                "max_abs_logit_diff": round(float((value - reference).abs().max()), 5),
            }
    log(f"agreement: {out}")
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rs8_argument(ap)
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: the recipe's network)")
    ap.add_argument(
        "--models",
        nargs="*",
        default=["pspnet:resnet18:256", "pspnet:resnet50:512"],
        help="arch:encoder:size with random weights, forward section only",
    )
    ap.add_argument(
        "--scene", type=Path, default=Path("/work/shared/data/scenes_full/full_deepglobe_855.tif")
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--submit-repeat", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "loadavg_start": loadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.checkpoint:
            ckpt = load_checkpoint(args.checkpoint)
        else:
            ckpt = model_checkpoint("pspnet:tu-tf_efficientnet_lite0:192", work, "imagenet")
        result["checkpoint"] = str(args.checkpoint or "rs8 recipe network, ImageNet encoder, random head")
        if "forward" in args.only:
            result["forward"] = {"checkpoint": bench_forward(ckpt, work, args)}
            for spec in args.models:
                result["forward"][spec] = bench_forward(model_checkpoint(spec, work), work, args)
        if "submit" in args.only:
            result["submit"] = bench_submit(ckpt, args)
        if "scenes" in args.only:
            result["scenes"] = bench_scenes(ckpt, args, work)
        if "serving" in args.only:
            result["serving"] = bench_serving(ckpt, args, work)
        if "agreement" in args.only:
            result["agreement"] = bench_agreement(ckpt, args)
    result["loadavg_end"] = loadavg()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
