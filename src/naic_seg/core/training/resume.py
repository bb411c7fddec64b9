"""The resume checkpoint: model, optimiser, scaler, RNG and progress, written atomically."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from naic_seg.core.atomic import atomic_path
from naic_seg.core.checkpoint import CheckpointError

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeFile:
    """``work_dir/resume.pt`` of one stage (or nothing when there is no work_dir)."""

    def __init__(self, work_dir: str | None, fingerprint: dict):
        self.path = Path(work_dir) / RESUME_FILE if work_dir else None
        self.fingerprint = fingerprint

    def restore(self, stage, enabled: bool, announce: bool) -> tuple[int, list, dict]:
        """Load the saved state into ``stage`` if there is one and ``enabled``; returns (iteration,
        evaluation history, best evaluation) to continue from."""
        fresh = 0, [], {"iteration": None, "mIoU": -1.0}
        if self.path is None or not self.path.exists():
            return fresh
        if not enabled:
            if announce:
                log.info("resume is off: starting afresh and replacing %s", self.path)
            return fresh
        state = self._load()
        stage.load_state(state)
        _set_rng_state(state["rng"])
        if announce:
            log.info(
                "Resuming from iteration %d of %d (checkpoint %s)",
                state["iteration"],
                self.fingerprint["iterations"],
                self.path,
            )
        return state["iteration"], state["history"], state["best"]

    def save(self, stage, iteration: int, history: list, best: dict) -> None:
        if self.path is None:
            return
        state = {
            "fingerprint": self.fingerprint,
            "iteration": iteration,
            **stage.state(),
            "rng": _rng_state(),
            "history": history,
            "best": best,
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def _load(self) -> dict:
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(
                f"cannot read resume checkpoint '{self.path}': {type(err).__name__}: {err}"
            ) from err
        saved = state.get("fingerprint", {})
        differ = sorted(
            k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k)
        )
        if differ:
            raise CheckpointError(
                f"resume checkpoint '{self.path}' belongs to a run with other settings ({', '.join(differ)} "
                "differ); set the stage's resume parameter to false to start afresh, or remove the file"
            )
        return state
