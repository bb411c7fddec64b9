"""Web Mercator XYZ tiles and point queries of a scene's map, imagery and confidence, through rio-tiler.

rio-tiler's :class:`~rio_tiler.io.Reader` warps whatever CRS a scene has to Web Mercator and reads a COG's
overview that fits the zoom, so a zoomed-out tile of a 20,000-px map decodes a few of the overview's blocks,
not the map. Maps are read and warped with nearest resampling (a class is never averaged into another) and
coloured from their colour table; nodata, and anything outside the scene, is transparent. Each call opens
its own reader: rasterio datasets are not shared between the server's threads.
"""

from __future__ import annotations

import threading

import numpy as np
from rasterio.transform import rowcol
from rasterio.warp import transform as transform_points
from rio_tiler.colormap import cmap as colormaps
from rio_tiler.errors import PointOutsideBounds, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.utils import render

from naic_seg.core.labels import IGNORE_INDEX, ClassTable
from naic_seg.viewer.scenes import WGS84, SceneIndex, ViewerScene

TILE_SIZE = 256
LAYERS = ("map", "image", "confidence")
# The imagery of a scene that is not uint8 is stretched between these percentiles of its bands.
STRETCH_PERCENTILES = (2, 98)
CONFIDENCE_COLOURS = np.array([colormaps.get("viridis")[i] for i in range(256)], dtype=np.uint8)


class TileOutside(LookupError):
    """A tile or point outside the scene, or a layer the scene does not have."""


def _png(rgb: np.ndarray, alpha: np.ndarray) -> bytes:
    return render(rgb, mask=alpha, img_format="PNG")


class TileRenderer:
    """PNG tiles and point values of the scenes of an index."""

    def __init__(self, index: SceneIndex):
        self.index = index
        self._limits: dict[str, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def tile(self, name: str, layer: str, z: int, x: int, y: int) -> bytes:
        """The PNG of tile ``z/x/y`` of a scene's ``layer`` (one of :data:`LAYERS`)."""
        scene = self.index.get(name)
        if layer == "map":
            return self._map_tile(scene, z, x, y)
        if layer == "image" and scene.image is not None:
            return self._image_tile(scene, z, x, y)
        if layer == "confidence" and scene.confidence_path is not None:
            return self._confidence_tile(scene, z, x, y)
        raise TileOutside(f"scene '{name}' has no {layer!r} layer")

    def _read(self, path, z: int, x: int, y: int, indexes, resampling: str):
        with Reader(str(path)) as src:
            try:
                return src.tile(
                    x,
                    y,
                    z,
                    tilesize=TILE_SIZE,
                    indexes=indexes,
                    resampling_method=resampling,
                    reproject_method=resampling,
                )
            except TileOutsideBounds as err:
                raise TileOutside(str(err)) from None

    def _map_tile(self, scene: ViewerScene, z: int, x: int, y: int) -> bytes:
        img = self._read(scene.map_path, z, x, y, 1, "nearest")
        rgba = scene.colours[scene.class_index(img.data[0], self.index.classes)]
        alpha = np.where(img.mask > 0, rgba[..., 3], 0).astype(np.uint8)
        return _png(np.moveaxis(rgba[..., :3], -1, 0), alpha)

    def _image_tile(self, scene: ViewerScene, z: int, x: int, y: int) -> bytes:
        image = scene.image
        img = self._read(image.path, z, x, y, image.bands, "bilinear")
        if image.needs_stretch:
            img.rescale(in_range=self._stretch_limits(scene))
        return _png(img.data.astype(np.uint8, copy=False), img.mask.astype(np.uint8, copy=False))

    def _confidence_tile(self, scene: ViewerScene, z: int, x: int, y: int) -> bytes:
        img = self._read(scene.confidence_path, z, x, y, 1, "nearest")
        level = _confidence_level(img.data[0], str(img.data.dtype))
        rgba = CONFIDENCE_COLOURS[level]
        alpha = np.where(img.mask > 0, 255, 0).astype(np.uint8)
        return _png(np.moveaxis(rgba[..., :3], -1, 0), alpha)

    def _stretch_limits(self, scene: ViewerScene) -> list[tuple[float, float]]:
        """Per-band (low, high) percentiles of the imagery, from rio-tiler's decimated read, once a scene."""
        with self._lock:
            if scene.name not in self._limits:
                low, high = STRETCH_PERCENTILES
                with Reader(str(scene.image.path)) as src:
                    stats = src.statistics(indexes=scene.image.bands, percentiles=[low, high])
                limits = []
                for band in stats.values():
                    lo, hi = band.model_extra[f"percentile_{low}"], band.model_extra[f"percentile_{high}"]
                    limits.append((lo, hi if hi > lo else lo + 1))
                self._limits[scene.name] = limits
            return self._limits[scene.name]

    def point(self, name: str, lon: float, lat: float) -> dict:
        """What the map says at a longitude and latitude: the class, the pixel, the scene's coordinates."""
        scene = self.index.get(name)
        (x,), (y,) = transform_points(WGS84, scene.crs, [lon], [lat])
        answer = {"scene": name, "lon": lon, "lat": lat, "x": x, "y": y, "crs": scene.crs}
        with Reader(str(scene.map_path)) as src:
            row, col = rowcol(src.transform, x, y)
            answer |= {"row": int(row), "column": int(col)}
            try:
                point = src.point(lon, lat)
            except PointOutsideBounds:
                return answer | {"inside": False, "class": None, "confidence": None}
        index = (
            int(scene.class_index(point.data[:1], self.index.classes)[0]) if point.mask[0] else IGNORE_INDEX
        )
        answer |= {"inside": True, "class": self._class(scene, index, int(point.data[0]))}
        return answer | {"confidence": self._confidence_at(scene, lon, lat) if answer["class"] else None}

    def _class(self, scene: ViewerScene, index: int, value: int) -> dict | None:
        classes: ClassTable = self.index.classes
        if index >= classes.num_classes:
            return None  # nodata
        return {
            "index": index,
            "value": int(classes.values[index]),
            "stored": value,
            "name": classes.names[index],
            "colour": [int(c) for c in scene.colours[index, :3]],
        }

    def _confidence_at(self, scene: ViewerScene, lon: float, lat: float) -> float | None:
        if scene.confidence_path is None:
            return None
        with Reader(str(scene.confidence_path)) as src:
            try:
                point = src.point(lon, lat)
            except PointOutsideBounds:
                return None
        if not point.mask[0]:
            return None
        value = float(point.data[0])
        return value / 255.0 if np.issubdtype(point.data.dtype, np.integer) else value


def _confidence_level(data: np.ndarray, dtype: str) -> np.ndarray:
    """Confidence -> 0..255 colour levels: uint8 is 255 x the top-class probability, floats are 0..1."""
    if dtype == "uint8":
        return data
    return np.clip(np.rint(data.astype(np.float32) * 255), 0, 255).astype(np.uint8)
