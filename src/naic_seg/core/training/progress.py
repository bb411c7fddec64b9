"""The log window: mean losses, images/s and ETA every ``log_interval`` iterations, shown by the project's one
progress reporter (:class:`naic_seg.core.progress.Progress`) as a bar or log lines."""

from __future__ import annotations

import logging
import time

import torch

from naic_seg.core.progress import Progress

log = logging.getLogger(__name__)


class LogWindow:
    """Losses summed on the device (read once per window) and the training time, pauses excluded."""

    def __init__(self, device: torch.device, images_per_iteration: int):
        self.images_per_iteration = images_per_iteration
        self.sums = torch.zeros(2, device=device)
        self.iterations = 0
        self.elapsed = 0.0
        self.started = time.perf_counter()
        self.train_seconds = 0.0
        self.windows: list[tuple[int, float]] = []  # (images, seconds) of each closed window

    def add(self, loss: torch.Tensor, aux_loss: torch.Tensor) -> None:
        self.sums += torch.stack([loss, aux_loss])
        self.iterations += 1

    def pause(self) -> None:
        """Before an evaluation or a checkpoint: their time is not training time."""
        self.elapsed += time.perf_counter() - self.started

    def resume(self) -> None:
        self.started = time.perf_counter()

    def close(self, lr: float, remaining: int) -> tuple[dict, float]:
        """The window's stats (mean losses, lr, images/s) and the ETA in seconds; starts a new window."""
        self.pause()
        images = self.iterations * self.images_per_iteration
        self.train_seconds += self.elapsed
        self.windows.append((images, self.elapsed))
        mean = (self.sums / self.iterations).tolist()
        stats = {"loss": mean[0], "aux_loss": mean[1], "lr": lr, "images_per_s": images / self.elapsed}
        eta = remaining * self.elapsed / self.iterations
        self.sums.zero_()
        self.iterations, self.elapsed = 0, 0.0
        self.resume()
        return stats, eta

    @property
    def steady_rate(self) -> float:
        """Training images/s, leaving out the first window (worker start-up, first decodes) when there are
        others: the figure a long run settles at."""
        steady = self.windows[1:] or self.windows
        seconds = sum(t for _, t in steady)
        return sum(n for n, _ in steady) / seconds if seconds else 0.0


# The line of each log window when no bar is shown (rate and ETA are the window's: training time only).
TRAIN_LINE = (
    "iter {done}/{total} loss {loss:.4f} aux {aux_loss:.4f} lr {lr:.3e} {rate:.1f} img/s ETA {eta_hms}"
)


def training_progress(total: int, start: int, enabled: bool) -> Progress:
    """The training loop's reporter: a bar on a terminal, a log line per log window otherwise (only where
    ``enabled``: the main rank)."""
    return Progress(log, total, TRAIN_LINE, bar_unit="it", start=start, enabled=enabled)


def show_window(progress: Progress, iteration: int, stats: dict, eta_s: float) -> None:
    """Report a closed log window (:meth:`LogWindow.close`'s stats and ETA) at ``iteration``."""
    bar = {
        "loss": f"{stats['loss']:.4f}",
        "lr": f"{stats['lr']:.2e}",
        "img_s": f"{stats['images_per_s']:.1f}",
    }
    progress.update(iteration, rate=stats["images_per_s"], eta_s=eta_s, postfix=bar, **stats)
