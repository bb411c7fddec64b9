"""Throughput and peak memory of the reference models (PSPNet / DeepLabV3+) on a synthetic in-memory batch.

For each architecture x encoder x output stride it times
  * train: forward + backward + SGD step (train mode, loss = CE + 0.4 * aux CE), images/s;
  * infer: forward only (eval mode, ``torch.inference_mode``), images/s;
and the peak memory of the train phase (and of the infer phase):
  * CUDA: ``torch.cuda.max_memory_allocated`` (absolute: weights + optimizer state + activations);
  * CPU: peak-RSS delta: the kernel's high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs``
    before each phase (after ``gc`` + ``malloc_trim``), and the delta ``VmHWM - VmRSS(start)`` is reported
    (activations, gradients, optimizer state; not the weights). Without a resettable HWM it falls back to
    ``getrusage`` ``ru_maxrss`` (process-lifetime peak, so only the first record is exact).

    .venv/bin/python -m benchmarks.bench_models --size 512 --batch 4 --encoders resnet50 \\
        --strides 16 8 > bench.json

``--encoders`` takes any name of the models registry (``naic_seg.core.models.ENCODERS``), e.g.
``resnet18 tu-tf_efficientnet_lite0 tu-tf_efficientnet_lite1 tu-tf_efficientnet_lite2``; weights are random
(speed and memory do not depend on them).

One JSON document (a list of records) goes to stdout; progress goes to stderr. ``measure`` lives in
``benchmarks/_models.py`` (bench_train uses it too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks._models import measure, trim_heap
from naic_seg.core.models import ARCHITECTURES, ENCODERS, OUTPUT_STRIDES
from naic_seg.core.runtime import Runtime

CPU_DEFAULTS = {"iters": 2, "warmup": 1}
CUDA_DEFAULTS = {"iters": 20, "warmup": 5}


def log(msg: str) -> None:
    print(f"[bench_models] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default: 2 on CPU, 20 on CUDA)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed iterations (default: 1 on CPU, 5 on CUDA)"
    )
    p.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    p.add_argument("--encoders", nargs="+", default=["resnet50"], choices=ENCODERS)
    p.add_argument("--strides", nargs="+", type=int, default=[16, 8], choices=OUTPUT_STRIDES)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "none"],
        help="auto: the runtime policy (bf16 on CUDA and on CPUs with AMX / AVX-512-BF16, else float32)",
    )
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    dev = Runtime.resolve(args.device).device
    defaults = CUDA_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    iters = args.iters if args.iters is not None else defaults["iters"]
    warmup = args.warmup if args.warmup is not None else defaults["warmup"]

    records = []
    for arch in args.archs:
        for encoder in args.encoders:
            for stride in args.strides:
                label = f"{arch} {encoder} OS{stride} {args.size}px x{args.batch} on {dev}"
                log(f"{label}: {warmup} warmup + {iters} timed iterations ...")
                start = time.perf_counter()
                try:
                    rec = measure(
                        arch, encoder, stride, args.size, args.batch, iters, warmup,
                        dev, args.amp, args.channels_last,
                    )  # fmt: skip
                except (torch.OutOfMemoryError, RuntimeError) as exc:  # keep going with the other configs
                    log(f"{label}: FAILED: {exc}")
                    rec = {"arch": arch, "encoder": encoder, "stride": stride, "size": args.size,
                           "batch": args.batch, "device": str(dev), "error": str(exc)[:500],
                           "torch": torch.__version__}  # fmt: skip
                    trim_heap()
                else:
                    log(
                        f"{label}: train {rec['train_img_s']} img/s, infer {rec['infer_img_s']} img/s, "
                        f"peak {rec['peak_mem_mb']} MB ({time.perf_counter() - start:.0f} s)"
                    )
                records.append(rec)
    json.dump(records, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
