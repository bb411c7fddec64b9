"""Test tiles -> predictions pickle -> contest submission zip (-> score, when test labels exist)."""

from naic_seg.pipelines.submit.pipeline import create_pipeline

__all__ = ["create_pipeline"]
