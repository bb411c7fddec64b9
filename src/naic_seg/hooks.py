"""Project hooks: fail before long work on a bad parameter block or an output that could not be written;
name and tag the MLflow run; quieten known chatty loggers; end every run with a short summary."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

from kedro.framework.hooks import hook_impl

from naic_seg import quiet
from naic_seg.core.atomic import check_writable

log = logging.getLogger(__name__)


def output_path(dataset) -> Path | None:
    """The file a dataset writes, from its ``filepath`` (possibly wrapped, e.g. by MlflowArtifactDataset)."""
    for candidate in (dataset, getattr(dataset, "_dataset", None)):
        path = getattr(candidate, "_filepath", None)
        if path is not None:
            return Path(str(path))
    return None


class OutputCheckHook:
    """Fails a run before its first node: a parameter block its nodes would refuse, or an output that could
    not be written."""

    def __init__(self):
        self.params: dict = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        self.params = dict(context.params)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        """Every block the run's nodes take parses (a typo in submit's fails before training, not after),
        and every file the run will write is writable now, not after hours of training."""
        from naic_seg.pipelines.options import parse_blocks

        parse_blocks(self.params, [name.removeprefix("params:") for name in pipeline.inputs()])
        for name in sorted(pipeline.all_outputs()):
            if name not in catalog:
                continue
            path = output_path(catalog.get(name))
            if path is not None:
                check_writable(path / "probe" if _is_versioned(catalog.get(name)) else path)


def _is_versioned(dataset) -> bool:
    return getattr(dataset, "_version", None) is not None


def git_state(project_path: str | Path) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` of the project, or "unknown" outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=project_path, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit, "git.dirty": "unknown" if status is None else str(bool(status)).lower()}


def run_name(env: str, params: dict, pipelines: list[str], now: float | None = None) -> str:
    """``<env> <pipelines> <arch>/<encoder> <UTC time>``: runs a person can tell apart in the UI."""
    model = (params.get("train_stage1") or {}).get("model") or {}
    arch = f" {model.get('arch')}/{model.get('encoder')}" if model.get("arch") else ""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(now))
    return f"{env} {'+'.join(pipelines)}{arch} {stamp}"


class RunHook:
    """Names and tags the MLflow run kedro-mlflow opened, and ends the run with a summary."""

    def __init__(self):
        self.params: dict = {}
        self.run: tuple[str, str] | None = None  # (run id, run name)

    @hook_impl
    def after_context_created(self, context) -> None:
        # Kedro configures logging for the session before this point; levels set earlier would be reset.
        quiet.quiet_loggers()
        self.params = dict(context.params)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        import mlflow

        run = mlflow.active_run()  # kedro-mlflow's hook (registered later, so called first) opened it
        if run is None:
            self.run = None
            return
        pipelines = run_params.get("pipeline_names") or ["__default__"]
        env = run_params.get("env") or "local"
        name = run_name(env, self.params, pipelines)
        tags = {"naic_seg.env": env, **git_state(run_params.get("project_path", "."))}
        if self.params.get("run_name"):
            name = self.params["run_name"]
        elif run.info.run_name != "+".join(pipelines):  # mlflow.yml named the run: keep its name
            name = run.info.run_name
        mlflow.set_tags({**tags, "mlflow.runName": name})
        self.run = (run.info.run_id, name)

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        for line in summary_lines(pipeline.all_outputs(), catalog, self.run):
            log.info(line)


_SCORES = {
    "stage1_metrics": "stage 1 hold-out",
    "stage2_metrics": "stage 2 hold-out",
    "submission_metrics": "submission on test labels",
}
_FILES = {
    "stage2_checkpoint": "checkpoint",
    "stage1_checkpoint": "stage-1 checkpoint",
    "submission": "submission zip",
}


def summary_lines(outputs, catalog, run: tuple[str, str] | None) -> list[str]:
    """What a person wants at the end of a run: its scores, where its files are, how to open MLflow."""
    lines = ["Run summary:"]
    for name, what in _SCORES.items():
        path = output_path(catalog.get(name)) if name in outputs and name in catalog else None
        if path is not None and path.is_file():
            scores = json.loads(path.read_text())
            scores = scores.get("final", scores)
            if "mIoU" in scores:
                lines.append(f"  {what}: mIoU {scores['mIoU']:.4f}, FWIoU {scores['FWIoU']:.4f}")
    for name, what in _FILES.items():
        if name in outputs and name in catalog:
            dataset = catalog.get(name)
            path = dataset.load().path if _is_versioned(dataset) else output_path(dataset)
            if path is not None and Path(path).is_file():
                lines.append(f"  {what}: {path}")
    if run is not None:
        import mlflow

        uri = mlflow.get_tracking_uri()
        lines.append(f"  MLflow run {run[0]} ('{run[1]}') in {uri}")
        lines.append(f"  open the UI: mlflow ui --backend-store-uri {uri}")
    return lines if len(lines) > 1 else []
