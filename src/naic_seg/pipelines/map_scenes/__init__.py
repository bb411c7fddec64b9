"""GeoTIFF scenes -> land-cover COG maps, class-area tables, quick-looks (-> scores, when labels exist)."""

from naic_seg.pipelines.map_scenes.pipeline import create_pipeline

__all__ = ["create_pipeline"]
