"""Log the trained model as an MLflow model after stage 2 and register it."""

from naic_seg.pipelines.model_export.pipeline import create_pipeline

__all__ = ["create_pipeline"]
