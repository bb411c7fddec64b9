"""The runtime policy every PyTorch path shares: device, precision, memory format, loaders, batches.

Training, evaluation, submit and scene mapping all go through one :class:`Runtime`, so ``auto`` means the
same thing everywhere:

* ``device: auto`` -- CUDA when available, else the CPU.
* ``amp: auto`` -- on CUDA bf16 autocast (fp16 with a grad scaler where bf16 is not supported); on a CPU
  bf16 autocast only where PyTorch runs bf16 natively (AMX tiles or AVX-512-BF16), float32 elsewhere:
  on a CPU without them bf16 is emulated and several times slower than float32.
* ``channels_last: auto`` -- on wherever bf16/fp16 autocast is on (oneDNN and cuDNN pick their fast
  kernels for NHWC there), off for float32 on a CPU.
* ``cudnn_benchmark: auto`` -- on for CUDA.

Loss, metrics and the confusion matrix stay float32; parameters and BatchNorm statistics stay float32
under autocast, so checkpoints are float32 whatever precision trained them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from naic_seg.core.data import collate
from naic_seg.core.normalization import Normalizer

log = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively in PyTorch, and the capability that says so."""
    if torch.cpu._is_amx_tile_supported():
        return True, "AMX tiles"
    if torch.cpu._is_avx512_bf16_supported():
        return True, "AVX-512-BF16"
    return False, "no AMX or AVX-512-BF16 (bf16 would be emulated)"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype (None: float32) for ``amp`` on ``device``, and why."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}; got {amp!r}")
    if amp != "auto":
        return _DTYPES[amp], f"amp: {amp} (set explicitly)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA device supports bf16"
        return torch.float16, "CUDA device without bf16: fp16 with a grad scaler"
    if device.type == "cpu":
        fast, why = cpu_bf16_support()
        return (torch.bfloat16, f"CPU has {why}") if fast else (None, f"CPU has {why}")
    return None, f"float32 on {device.type}"


def _switch(value: bool | str, auto: bool) -> bool:
    if value == "auto":
        return auto
    if isinstance(value, str):
        raise ValueError(f"expected true, false or auto; got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run. Build it with :meth:`resolve`."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    reason: str = ""

    @classmethod
    def resolve(
        cls,
        device: str = "auto",
        amp: str = "auto",
        channels_last: bool | str = "auto",
        cudnn_benchmark: bool | str | None = None,
        local_rank: int | None = None,
    ) -> Runtime:
        """Resolve the ``auto`` switches; ``cudnn_benchmark`` (if given) is applied process-wide."""
        dev = resolve_device(device)
        if dev.type == "cuda" and local_rank is not None:
            dev = torch.device("cuda", local_rank)
        amp_dtype, reason = resolve_amp(amp, dev)
        if cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = _switch(cudnn_benchmark, dev.type == "cuda")
        return cls(dev, amp_dtype, _switch(channels_last, amp_dtype is not None), reason)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def describe(self) -> str:
        layout = "channels-last" if self.channels_last else "contiguous"
        return f"{self.device} {self.precision} autocast, {layout} ({self.reason})"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def normalizer(self, normalization: dict | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 NCHW (any device) -> float32 on this device, in this memory format, normalised with
        ``{"mean", "std"}`` (default ImageNet's: what the ResNets' weights expect)."""
        normalize = Normalizer.of(normalization).to(self.device)

        def prepare(images: torch.Tensor) -> torch.Tensor:
            x = normalize(images.to(self.device, non_blocking=True))
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

        return prepare

    def loader(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        workers: int,
        sampler: torch.utils.data.Sampler | None = None,
        seed: int = 0,
    ) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.cuda,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
            # Worker seeds come from this generator, not the global RNG, so resuming draws the same numbers.
            generator=torch.Generator().manual_seed(seed),
        )
