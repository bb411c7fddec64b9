"""The one progress reporter: the log lines each long loop (scene windows, test tiles, training) gives when no
terminal shows a bar, with their rate and ETA, at the cadence each loop sets."""

from __future__ import annotations

import logging

import pytest

import naic_seg.core.progress as progress_module
from naic_seg.core.progress import Progress
from naic_seg.core.training.progress import show_window, training_progress

log = logging.getLogger("naic_seg.test_progress")


@pytest.fixture
def clock(monkeypatch):
    """A settable ``time.perf_counter`` for the reporter."""
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    return now


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name or r.name.startswith("naic_seg")]


def test_scene_windows_log_at_most_every_every_s_seconds_with_rate_and_eta(clock, caplog):
    progress = Progress(log, 100, every_s=10, label="scene:", unit="windows")
    with caplog.at_level(logging.INFO, logger=log.name):
        clock[0] += 5
        progress.add(20)  # 5 s: not due
        clock[0] += 5
        progress.add(20)  # 10 s, 40 done: 4 windows/s, 60 left: 15 s
        clock[0] += 9
        progress.add(30)  # 9 s after the last line: not due
        clock[0] += 11
        progress.add(30)  # done: the end is logged by the mapper itself, not here
    assert lines(caplog) == ["scene: 40/100 windows (4.0 windows/s, ETA 15 s)"]


def test_tiles_log_each_time_the_count_passes_a_multiple_of_every_n(clock, caplog):
    progress = Progress(log, 10, every_n=4, label="predicted", unit="tiles")
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(5):  # batches of 2 tiles, one second each
            clock[0] += 1
            progress.add(2)
    assert lines(caplog) == [
        "predicted 4/10 tiles (2.0 tiles/s, ETA 3 s)",
        "predicted 8/10 tiles (2.0 tiles/s, ETA 1 s)",
    ]


def test_every_n_zero_and_a_disabled_reporter_say_nothing(clock, caplog):
    quiet = Progress(log, 10, every_n=0, label="predicted", unit="tiles")
    other_rank = Progress(log, 10, label="x", unit="tiles", enabled=False)
    with caplog.at_level(logging.INFO, logger=log.name):
        clock[0] += 1
        quiet.add(10)
        other_rank.update(10)
    assert lines(caplog) == []


def test_training_logs_every_window_with_its_own_rate_and_an_hms_eta(clock, caplog):
    """Training passes the window's rate and ETA (training time only, evaluations excluded): the reporter
    must not replace them with its own count since the start (here 0 iterations/s after a resume)."""
    progress = training_progress(total=1000, start=400, enabled=True)
    stats = {"loss": 0.51234, "aux_loss": 0.7, "lr": 0.001, "images_per_s": 12.34}
    with caplog.at_level(logging.INFO, logger="naic_seg.core.training.progress"):
        clock[0] += 3
        show_window(progress, 500, stats, eta_s=3725.0)
    assert lines(caplog) == ["iter 500/1000 loss 0.5123 aux 0.7000 lr 1.000e-03 12.3 img/s ETA 01:02:05"]
