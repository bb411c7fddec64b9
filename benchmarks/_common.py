"""Small helpers every benchmark script shares: where the rs8 tiles are, and the machine's load."""

from __future__ import annotations

import argparse
import contextlib
import os
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
