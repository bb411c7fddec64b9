"""One progress reporter for every long loop (scene windows, test tiles, training iterations).

On a terminal (and where the loop asks for one) a tqdm bar; otherwise a log line when one is due: every
``every_s`` seconds, each time the count passes a multiple of ``every_n``, or, with neither, at every
update (the loop decides). The line is the loop's ``line`` template, filled with ``done``, ``total``,
``rate`` (units per second since the start, unless the loop measures its own), ``eta`` (seconds),
``eta_hms`` (the same as ``HH:MM:SS``) and whatever fields the loop passes.
"""

from __future__ import annotations

import logging
import sys
import time

RATE_LINE = "{label} {done}/{total} {unit} ({rate:.1f} {unit}/s, ETA {eta:.0f} s)"


class Progress:
    """Counts a loop's units toward ``total`` (from ``start``) and reports as set up (see the module)."""

    def __init__(
        self,
        logger: logging.Logger,
        total: int,
        line: str = RATE_LINE,
        *,
        bar_unit: str | None = None,
        desc: str | None = None,
        start: int = 0,
        every_s: float | None = None,
        every_n: int | None = None,
        enabled: bool = True,
        leave: bool = True,
        **fields,
    ):
        self.logger, self.total, self.line, self.fields = logger, total, line, fields
        self.every_s, self.every_n, self.enabled = every_s, every_n, enabled
        self.start = self.done = start
        self.started = self.last = time.perf_counter()
        self.bar = None
        if enabled and bar_unit is not None and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=start, desc=desc, unit=bar_unit, leave=leave, dynamic_ncols=True
            )

    def add(self, n: int) -> None:
        """``n`` more units done."""
        if self.bar is not None:
            self.done += n
            self.bar.update(n)
            return
        self.update(self.done + n)

    def update(
        self,
        done: int,
        rate: float | None = None,
        eta_s: float | None = None,
        postfix: dict | None = None,
        **fields,
    ) -> None:
        """``done`` units done so far. ``rate`` / ``eta_s``: the loop's own measure (e.g. training time,
        pauses excluded), else units per second since the start; ``postfix``: what the bar shows beside."""
        step, self.done = done - self.done, done
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = done
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()
            return
        now = time.perf_counter()
        if not self._due(now, step):
            return
        self.last = now
        if rate is None:
            rate = (done - self.start) / max(now - self.started, 1e-9)
        if eta_s is None:
            eta_s = (self.total - done) / max(rate, 1e-9)
        eta_hms = time.strftime("%H:%M:%S", time.gmtime(eta_s))
        values = self.fields | fields
        text = self.line.format(done=done, total=self.total, rate=rate, eta=eta_s, eta_hms=eta_hms, **values)
        self.logger.info(text)

    def _due(self, now: float, step: int) -> bool:
        if self.every_s is not None:
            return now - self.last >= self.every_s and self.done < self.total
        if self.every_n is not None:
            return bool(self.every_n) and self.done % self.every_n < step
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
