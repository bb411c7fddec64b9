"""Project hooks: fail before long work when an output could not be written."""

from __future__ import annotations

import logging
from pathlib import Path

from kedro.framework.hooks import hook_impl

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
    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        """Every file the run will write must be writable now, not after hours of training."""
        for name in sorted(pipeline.all_outputs()):
            if name not in catalog:
                continue
            path = output_path(catalog.get(name))
            if path is not None:
                check_writable(path / "probe" if _is_versioned(catalog.get(name)) else path)


def _is_versioned(dataset) -> bool:
    return getattr(dataset, "_version", None) is not None
