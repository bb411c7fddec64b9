"""One model configuration's train and inference images/s and peak memory (bench_models, bench_train).

See ``benchmarks/bench_models.py`` for what the memory figures mean on CPU and on CUDA.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import status_kb
from naic_seg.core.models import build_model
from naic_seg.core.runtime import Runtime

NUM_CLASSES = 8
AUX_WEIGHT = 0.4


# ------------------------------------------------------------------------------------------ memory
def trim_heap() -> None:
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
        trim_heap()
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
    trim_heap()
    return record
