"""naic-seg: NAIC 2020 remote-sensing segmentation as a Kedro project."""

import os

# MLflow 3 reports usage to its servers from a background thread unless told not to; no naic-seg run
# reaches for the network (kedro-telemetry is opted out by the project's .telemetry file).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from naic_seg import quiet  # noqa: E402

quiet.install()

__version__ = "0.1.0"
