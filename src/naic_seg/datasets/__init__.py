"""Kedro datasets the catalog needs that kedro-datasets lacks."""

from naic_seg.datasets.checkpoint import TorchCheckpointDataset
from naic_seg.datasets.json_atomic import AtomicJSONDataset
from naic_seg.datasets.scenes import SceneFolderDataset, SceneOutputFolderDataset
from naic_seg.datasets.stac import StacCatalogDataset
from naic_seg.datasets.submission import PredictionsPickleDataset, SubmissionZipDataset
from naic_seg.datasets.tile_folder import TileFolderDataset

__all__ = [
    "AtomicJSONDataset",
    "PredictionsPickleDataset",
    "SceneFolderDataset",
    "SceneOutputFolderDataset",
    "StacCatalogDataset",
    "SubmissionZipDataset",
    "TileFolderDataset",
    "TorchCheckpointDataset",
]
