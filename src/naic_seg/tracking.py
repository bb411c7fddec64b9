"""MLflow glue for nodes: the library reports metrics through a plain callable, built here."""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger(__name__)


class MlflowMetricLogger:
    """Logs ``{name: value}`` at a step into one MLflow run, every name prefixed (``stage1.val_mIoU``).

    Holds only the tracking URI and run id, so it pickles into distributed workers: rank 0 logs into
    the run that ``kedro run`` opened, from its own process.
    """

    def __init__(self, tracking_uri: str, run_id: str, prefix: str):
        self.tracking_uri, self.run_id, self.prefix = tracking_uri, run_id, prefix
        self._client = None

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        now = int(time.time() * 1000)
        batch = [
            Metric(f"{self.prefix}.{k}", float(v), now, int(step))
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        self._client.log_batch(self.run_id, metrics=batch)

    def __getstate__(self) -> dict:
        return {
            "tracking_uri": self.tracking_uri,
            "run_id": self.run_id,
            "prefix": self.prefix,
            "_client": None,
        }


def active_run_logger(prefix: str) -> MlflowMetricLogger | None:
    """A logger into the active MLflow run (kedro-mlflow opens one per ``kedro run``), or None."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    return MlflowMetricLogger(mlflow.get_tracking_uri(), run.info.run_id, prefix)


def log_params(params: dict) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_params(params)


def log_artifact_file(path: str, artifact_path: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifact(path, artifact_path)


def active_run_id() -> str | None:
    """The id of the MLflow run that ``kedro run`` opened, or None."""
    import mlflow

    run = mlflow.active_run()
    return None if run is None else run.info.run_id


def registered_versions(run_ids: list[str]) -> list[dict]:
    """``[{"name", "version", "run_id"}]`` of the registered model versions logged by these runs (the
    registry records the run each version came from); empty when there is none or no registry answers."""
    import mlflow
    from mlflow.exceptions import MlflowException

    found = []
    client = mlflow.MlflowClient()
    for run_id in run_ids:
        try:
            versions = client.search_model_versions(f"run_id = '{run_id}'")
        except MlflowException as err:
            log.warning("No registered model looked up for run %s: %s", run_id, err)
            continue
        found += [{"name": v.name, "version": str(v.version), "run_id": run_id} for v in versions]
    return found


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics, step=step)
