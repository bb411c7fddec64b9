"""naic-seg: NAIC 2020 remote-sensing segmentation as a Kedro project."""

__version__ = "0.1.0"
