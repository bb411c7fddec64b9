"""One training stage as a template pipeline; train_stage1 and train_stage2 are two namespaced copies."""

from naic_seg.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
