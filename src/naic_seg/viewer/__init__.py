"""A web map viewer of the scene maps: FastAPI + rio-tiler tiles and a vendored Leaflet page; no Kedro import.

``kedro view`` (``naic_seg/cli.py``) builds a :class:`SceneIndex` from the project's folders and serves
:func:`create_app` with uvicorn; anything else can do the same with folders of its own.
"""

from naic_seg.viewer.app import create_app
from naic_seg.viewer.scenes import SceneIndex, UnknownScene, ViewerScene, read_json
from naic_seg.viewer.tiles import TileOutside, TileRenderer

__all__ = [
    "SceneIndex",
    "TileOutside",
    "TileRenderer",
    "UnknownScene",
    "ViewerScene",
    "create_app",
    "read_json",
]
