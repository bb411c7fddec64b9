"""Window geometry along one axis, shared by every sliding-window loop (a big tile in
:meth:`naic_seg.core.predict.Predictor.slide`, a scene in :mod:`naic_seg.core.scenes`): windows of ``window``
pixels, ``stride`` apart, the last one flush with the end, so that every pixel is in a window and no window
leaves the image."""

from __future__ import annotations

import math


def window_stride(window: int, overlap: float) -> int:
    """Pixels from one window's origin to the next one's for windows that share ``overlap`` of their side."""
    return max(1, math.ceil(window * (1 - overlap)))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window origins along one axis: every ``stride``, the last one flush with the end (one window at 0
    when the axis is no longer than a window)."""
    if length <= window:
        return [0]
    return [*range(0, length - window, stride), length - window]
