"""Where a scene's windows lie, how much each one weighs each pixel, and the blender that adds their logits up
row of windows by row of windows: arrays in, arrays out (no file is read or written here).

The blend weight of a window is 1 in its middle and falls along a squared-sine ramp to 0 at the sides that
face another window, keeping an outer quarter of the overlap at weight 0: a CNN sees least context at a
window's border, and there a neighbouring window always has a better view. Sides on the scene's own border
keep weight 1, so every pixel has weight from some window. Neighbouring ramps add up to 1 (the last window,
flush with the scene's end, shifts its ramp to mirror its neighbour's), so logits that agree across windows
are reproduced exactly: for a model whose receptive field fits in the zero margin the blended map equals one
whole-scene forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from naic_seg.core.labels import IGNORE_INDEX
from naic_seg.core.windows import window_starts


def blend_profile(
    window: int, overlap_px: int, taper_start: bool, taper_end: bool, lead: int = 0
) -> np.ndarray:
    """1-D weight of a window: 0 over a quarter of the overlap at a tapered side, a squared-sine ramp over
    the middle half of the overlap, 1 elsewhere. Mirror ramps of two neighbours add up to 1. ``lead``: a
    window that starts ``lead`` pixels less than a stride after its neighbour (the last one, flush with the
    scene's end) keeps weight 0 over those pixels too, so that its ramp still mirrors the neighbour's."""
    profile = np.ones(window, dtype=np.float32)
    margin = overlap_px // 4
    ramp_len = overlap_px - 2 * margin
    ramp = np.sin(np.pi / 2 * (np.arange(ramp_len) + 0.5) / max(ramp_len, 1)) ** 2
    if taper_start:
        profile[: lead + margin] = 0
        profile[lead + margin : lead + margin + ramp_len] = ramp
    if taper_end:
        profile[window - margin :] = 0
        profile[window - margin - ramp_len : window - margin] = ramp[::-1]
    return profile


@dataclass(frozen=True)
class WindowAxis:
    """The windows along one axis of a scene and the pixels each one finishes.

    Window ``i`` finishes its pixels ``leads[i] .. ends[i]`` (window coordinates): no later window along this
    axis weighs them. These ranges tile the axis without gap or overlap. The last window, flush with the
    scene's end, usually starts less than a stride after its neighbour; its ramp is shifted by its lead so
    that it still mirrors the neighbour's (weights add up to 1) and the overlap carried from one window to
    the next is never more than ``window - stride`` pixels.
    """

    starts: list[int]
    span: int  # the window's length on this axis (the scene's, when the scene is shorter)
    stride: int
    leads: list[int]
    ends: list[int]
    profiles: list[np.ndarray]

    @classmethod
    def of(cls, length: int, window: int, stride: int) -> WindowAxis:
        starts = window_starts(length, window, stride)
        last, span = len(starts) - 1, min(window, length)
        leads = [0] + [prev + stride - start for prev, start in zip(starts, starts[1:], strict=False)]
        profiles = [
            blend_profile(window, window - stride, i > 0, i < last, lead=leads[i])[:span]
            for i in range(len(starts))
        ]
        return cls(starts, span, stride, leads, [stride] * last + [span], profiles)

    @property
    def carried(self) -> int:
        """Pixels a window shares with the next one along this axis (0 with one window)."""
        return self.span - self.stride if len(self.starts) > 1 else 0


def pad_to(window_image: np.ndarray, size: int) -> np.ndarray:
    """A window cut short by a scene smaller than ``size`` is mirrored out to full size, so the model
    sees the scene at the same scale as everywhere else (a resize would change it)."""
    _, h, w = window_image.shape
    if h == size and w == size:
        return window_image
    return np.pad(window_image, ((0, 0), (0, size - h), (0, size - w)), mode="symmetric")


def argmax(acc: np.ndarray) -> np.ndarray:
    """uint8 arg-max over the classes (axis 0), ties to the lower class as ``np.argmax``. torch's ``max``
    over a dimension runs on both cores and is twice as fast here as numpy's (and torch's own argmax)."""
    return torch.from_numpy(acc).max(0).indices.to(torch.uint8).numpy()


def argmax_confidence(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`argmax` and the top class's softmax probability, ``1 / sum_c exp(l_c - l_max)``, as
    ``round(255 p)`` in a byte."""
    logits = torch.from_numpy(acc)
    top = logits.max(0)
    total = torch.exp(logits - top.values).sum(0)
    confidence = total.reciprocal_().mul_(255).round_().to(torch.uint8)
    return top.indices.to(torch.uint8).numpy(), confidence.numpy()


@dataclass
class FinishedRows:
    """Full-width rows ``y .. y + len(classes)`` of the scene that no later window weighs: class indices
    (:data:`~naic_seg.core.labels.IGNORE_INDEX` where ``invalid``) and, when asked for, confidences."""

    y: int
    classes: np.ndarray
    invalid: np.ndarray
    confidence: np.ndarray | None


class Blender:
    """Blends windows taken in row-major order, in memory that does not grow with the scene's height and
    grows with its width only by the overlap rows carried from one row of windows to the next.

    ``buf`` (classes x window x window floats) holds the current window's pixels: the blend of every window
    so far that weighs them. Once a window is added, the pixels it finishes (see :class:`WindowAxis`) are
    final for this row of windows: in the rows that the row of windows finishes they go, as class indices,
    into ``band`` (a byte per pixel, full width), handed out when the row of windows is done; in the rows the
    next row of windows shares they go, as sums, into ``carry`` (classes x carried rows x width floats).
    With ``confidence`` the top class's probability of the same finished sums goes into ``conf_band`` (one
    more byte per pixel of the band) and is handed out beside the classes: no other memory, no seams.
    """

    def __init__(
        self, num_classes: int, width: int, ys: WindowAxis, xs: WindowAxis, confidence: bool = False
    ):
        self.ys, self.xs, self.width = ys, xs, width
        self.buf = np.zeros((num_classes, ys.span, xs.span), dtype=np.float32)
        self.carry = np.zeros((num_classes, ys.carried, width), dtype=np.float32)
        self.band = np.zeros((ys.span, width), dtype=np.uint8)
        self.conf_band = np.zeros((ys.span, width), dtype=np.uint8) if confidence else None
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.nodata_pixels = 0

    def add(self, k: int, j: int, logit: np.ndarray | None) -> None:
        """Window ``(k, j)`` (row, column of windows); ``logit`` None for a window skipped as all nodata."""
        ys, xs, buf = self.ys, self.xs, self.buf
        x, w = xs.starts[j], xs.span
        fresh = 0  # the first buffer column that no earlier window of this row weighed
        if j > 0:  # slide the buffer right by one window
            shift = x - xs.starts[j - 1]
            fresh = w - shift
            buf[:, :, :fresh] = buf[:, :, shift:]  # numpy buffers overlapping operands
            buf[:, :, fresh:] = 0
        else:
            buf.fill(0)
        if k > 0 and ys.carried:
            top = ys.leads[k]
            buf[:, top : top + ys.carried, fresh:] += self.carry[:, :, x + fresh : x + w]
        if logit is not None:
            buf += logit[:, : ys.span, :w] * (ys.profiles[k][:, None] * xs.profiles[j][None, :])
        lx, rx, ly, ry = xs.leads[j], xs.ends[j], ys.leads[k], ys.ends[k]
        if self.conf_band is None:
            self.band[ly:ry, x + lx : x + rx] = argmax(buf[:, ly:ry, lx:rx])
        else:
            cls, conf = argmax_confidence(buf[:, ly:ry, lx:rx])
            self.band[ly:ry, x + lx : x + rx], self.conf_band[ly:ry, x + lx : x + rx] = cls, conf
        if k < len(ys.starts) - 1:
            self.carry[:, :, x + lx : x + rx] = buf[:, ys.stride :, lx:rx]

    def finish_row(self, k: int, valid: np.ndarray) -> FinishedRows:
        """The rows that row ``k`` of windows finishes, nodata set and counted. ``valid``: the row of
        windows' valid-pixel mask."""
        ly, ry = self.ys.leads[k], self.ys.ends[k]
        cls = self.band[ly:ry]
        invalid = ~valid[ly:ry]
        cls[invalid] = IGNORE_INDEX
        self.counts += np.bincount(cls[~invalid], minlength=len(self.counts))[: len(self.counts)]
        self.nodata_pixels += int(invalid.sum())
        conf = None if self.conf_band is None else self.conf_band[ly:ry]
        return FinishedRows(self.ys.starts[k] + ly, cls, invalid, conf)
