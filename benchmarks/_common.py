"""Helpers every benchmark script shares: where the rs8 tiles are, the load, memory and CPU time."""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
from pathlib import Path

DEFAULT_RS8 = os.environ.get("NAIC_SEG_RS8", "/work/shared/data/rs8")


def add_rs8_argument(ap: argparse.ArgumentParser) -> None:
    """``--rs8``: the rs8 tile tree to read (default: $NAIC_SEG_RS8, else /work/shared/data/rs8)."""
    ap.add_argument(
        "--rs8",
        type=Path,
        default=Path(DEFAULT_RS8),
        help="the rs8 tree (default: $NAIC_SEG_RS8 or /work/shared/data/rs8)",
    )


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (other work on a 2-core machine skews every timing)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def status_kb(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``), or None where there is none."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its waited-for children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_model() -> str:
    """The CPU's model name and whether PyTorch runs bf16 natively on it (figures depend on both)."""
    name = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(ImportError, AttributeError):
        import torch

        fast = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
        name += ", native bf16" if fast else ", no native bf16"
    return name
