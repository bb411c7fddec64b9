"""Raw tile folders -> validated JSON manifests (train / val / test) and a dataset report."""

from naic_seg.pipelines.data_prep.pipeline import create_pipeline

__all__ = ["create_pipeline"]
