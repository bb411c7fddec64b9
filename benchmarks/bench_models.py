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

    .venv/bin/python benchmarks/bench_models.py --size 512 --batch 4 --encoders resnet50 \\
        --strides 16 8 > bench.json

``--encoders`` takes any name of the models registry (``naic_seg.core.models.ENCODERS``), e.g.
``resnet18 tu-tf_efficientnet_lite0 tu-tf_efficientnet_lite1 tu-tf_efficientnet_lite2``; weights are random
(speed and memory do not depend on them).

One JSON document (a list of records) goes to stdout; progress goes to stderr. ``measure`` is importable:

    from benchmarks.bench_models import measure
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script without an installed package: use the source tree
    src = Path(__file__).resolve().parents[1] / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import status_kb
else:
    from ._common import status_kb

from naic_seg.core.models import ARCHITECTURES, ENCODERS, OUTPUT_STRIDES, build_model  # noqa: E402
from naic_seg.core.runtime import Runtime  # noqa: E402

NUM_CLASSES = 8
AUX_WEIGHT = 0.4
CPU_DEFAULTS = {"iters": 2, "warmup": 1}
CUDA_DEFAULTS = {"iters": 20, "warmup": 5}


def log(msg: str) -> None:
    print(f"[bench_models] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ memory
def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of one phase, in MB (see the module docstring for what it means per device)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_delta"
        self.start_kb = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _trim_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.start_kb = status_kb("VmRSS") or 0
        except OSError:
            self.kind = "cpu_ru_maxrss_lifetime"
            self.start_kb = 0

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "cpu_peak_rss_delta":
            hwm = status_kb("VmHWM")
            if hwm is not None:
                return max(hwm - self.start_kb, 0) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, iters: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``iters`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return time.perf_counter() - start


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def measure(
    arch: str,
    encoder: str,
    stride: int,
    size: int = 512,
    batch: int = 4,
    iters: int = 2,
    warmup: int = 1,
    device: str | torch.device = "auto",
    amp: str = "auto",
    channels_last: bool = False,
) -> dict:
    """Train (fwd+bwd+SGD step) and inference images/s plus peak memory for one configuration."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    runtime = Runtime.resolve(str(device), amp, channels_last, cudnn_benchmark="auto")
    dev = runtime.device
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    model = build_model(arch, encoder, num_classes=NUM_CLASSES, output_stride=stride).to(dev)
    model = model.to(memory_format=memory_format)
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=memory_format)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size), device=dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    autocast = runtime.autocast

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits, aux = model(x)
            loss = F.cross_entropy(logits, y)
            if aux is not None:
                loss = loss + AUX_WEIGHT * F.cross_entropy(aux, y)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with autocast():
            model(x)

    mem = PeakMemory(dev)
    model.train()
    mem.reset()
    train_s = _timed(train_step, iters, warmup, dev)
    train_peak = mem.peak_mb()

    model.eval()
    optimizer.zero_grad(set_to_none=True)
    mem.reset()
    with torch.inference_mode():
        infer_s = _timed(infer_step, iters, warmup, dev)
    infer_peak = mem.peak_mb()

    record = {
        "arch": arch,
        "encoder": encoder,
        "stride": stride,
        "size": size,
        "batch": batch,
        "device": _device_name(dev),
        "dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(runtime.precision, "float32"),
        "runtime": runtime.describe(),
        "channels_last": bool(channels_last),
        "iters": iters,
        "warmup": warmup,
        "train_img_s": round(batch * iters / train_s, 4),
        "infer_img_s": round(batch * iters / infer_s, 4),
        "train_s_per_iter": round(train_s / iters, 4),
        "infer_s_per_iter": round(infer_s / iters, 4),
        "peak_mem_mb": round(train_peak, 1),
        "infer_peak_mem_mb": round(infer_peak, 1),
        "peak_mem_kind": mem.kind,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "torch": torch.__version__,
    }
    model = optimizer = x = y = None  # free before the next configuration
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    _trim_heap()
    return record


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
                    _trim_heap()
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
