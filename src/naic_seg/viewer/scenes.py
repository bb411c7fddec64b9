"""The scenes a viewer serves: the maps found in a folder, each with its imagery, areas and scores.

Every file the server reads is found here, once, when the index is built. A request names a scene, and that
name is only ever used as a key of :class:`SceneIndex`: no part of a URL becomes a path.

A map is ``<scene>.tif`` (or ``.tiff``) in the maps folder, as ``map_scenes`` writes it: one band of class
indices (uint8, nodata 255) or of the class table's stored values (uint16, nodata 0), with a colour table.
Beside it, ``<scene>_confidence.tif`` is shown as a confidence layer when it exists. The imagery is the scene
of the same name in the scenes folder, when one is given and holds it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rio_tiler.io import Reader

from naic_seg.core.labels import IGNORE_INDEX, PALETTE, ClassTable

log = logging.getLogger(__name__)

WGS84 = CRS.from_epsg(4326)
RASTER_SUFFIXES = (".tif", ".tiff")
CONFIDENCE_SUFFIX = "_confidence"
# What a map's data type says it stores (see SceneOptions.output_values).
ENCODINGS = {"uint8": "index", "uint16": "naic"}


class UnknownScene(LookupError):
    """A scene name that is not in the index."""


@dataclass(frozen=True)
class ImageSource:
    """A scene's imagery: its file, the 1-based bands shown as R, G, B, and whether they need a stretch."""

    path: Path
    bands: tuple[int, int, int]
    dtype: str
    has_overviews: bool

    @property
    def needs_stretch(self) -> bool:
        return self.dtype != "uint8"


@dataclass(frozen=True)
class ViewerScene:
    """One map and what the viewer shows with it. ``bounds``: west, south, east, north in EPSG:4326."""

    name: str
    map_path: Path
    width: int
    height: int
    crs: str
    pixel_size: tuple[float, float]
    pixel_unit: str  # "m", "°" or the CRS's own unit
    bounds: tuple[float, float, float, float]
    encoding: str  # "index" | "naic"
    colours: np.ndarray  # 256 x 4 uint8 RGBA by class index; alpha 0 for anything that is not a class
    areas: dict
    areas_source: str
    scores: dict | None
    image: ImageSource | None
    confidence_path: Path | None
    zooms: tuple[int, int]  # the Web Mercator zoom levels of the map's coarsest overview and its pixels
    version: int  # the map's modification time (ns): tile URLs carry it, so a new map is never a cached one

    def class_index(self, values: np.ndarray, classes: ClassTable) -> np.ndarray:
        """Stored map values -> class indices (255: nodata or not a class)."""
        if self.encoding == "naic":
            return classes.to_index(values)
        return values.astype(np.uint8, copy=False)

    def summary(self) -> dict:
        """What the page lists: size, place, scores and areas (JSON-ready)."""
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "crs": self.crs,
            "pixel_size": list(self.pixel_size),
            "pixel_unit": self.pixel_unit,
            "bounds": list(self.bounds),
            "encoding": self.encoding,
            "class_colours": self.colours[:IGNORE_INDEX, :3][self.colours[:IGNORE_INDEX, 3] > 0].tolist(),
            "layers": [
                "map",
                *(["image"] if self.image else []),
                *(["confidence"] if self.confidence_path else []),
            ],
            "image_overviews": None if self.image is None else self.image.has_overviews,
            "areas": self.areas,
            "areas_source": self.areas_source,
            "scores": self.scores,
            "zooms": list(self.zooms),
            "version": self.version,
        }


class SceneIndex:
    """The scenes by name, the class table they share, and the problems found while listing them."""

    def __init__(self, scenes: Sequence[ViewerScene], classes: ClassTable, problems: Sequence[str] = ()):
        self._scenes = {s.name: s for s in scenes}
        self.classes = classes
        self.problems = list(problems)

    @classmethod
    def build(
        cls,
        maps: str | os.PathLike,
        classes: ClassTable,
        scenes: str | os.PathLike | None = None,
        areas: dict | None = None,
        scores: dict | None = None,
        bands: Sequence[int] | None = None,
    ) -> SceneIndex:
        """List the maps in the folder ``maps``, with the imagery of the same name in ``scenes``.

        ``areas``: the area table ``map_scenes`` wrote (scene -> table); a scene it lacks, or whose table
        does not add up to the map's size, has its table read back from the map. ``scores``: the scene
        scores ``map_scenes`` wrote. ``bands``: the imagery's bands shown as R, G, B (default 1, 2, 3).
        """
        maps = Path(maps)
        if not maps.is_dir():
            raise FileNotFoundError(
                f"maps folder '{maps}' does not exist: run `kedro run --pipelines map_scenes`"
            )
        bands = tuple(int(b) for b in (bands or (1, 2, 3)))
        per_scene_scores = (scores or {}).get("scenes", {}) if (scores or {}).get("evaluated") else {}
        found, problems = [], []
        for path in map_files(maps):
            try:
                scene = _read_map(path, classes)
            except (RasterioError, ValueError) as err:
                problems.append(f"'{path}' is not shown: {err}")
                continue
            image, problem = _find_image(scenes, scene["name"], bands)
            if problem:
                problems.append(problem)
            table, source = _areas_for(scene, (areas or {}).get(scene["name"]), classes)
            confidence = _sibling(path, CONFIDENCE_SUFFIX)
            found.append(
                ViewerScene(
                    **scene,
                    areas=table,
                    areas_source=source,
                    scores=_scores_for(per_scene_scores.get(scene["name"])),
                    image=image,
                    confidence_path=confidence,
                )
            )
        for problem in problems:
            log.warning(problem)
        return cls(found, classes, problems)

    def get(self, name: str) -> ViewerScene:
        try:
            return self._scenes[name]
        except KeyError:
            raise UnknownScene(name) from None

    def __iter__(self) -> Iterator[ViewerScene]:
        return iter(self._scenes.values())

    def __len__(self) -> int:
        return len(self._scenes)

    def legend(self) -> list[dict]:
        """The class table with each class's colour as the maps draw it (the first map's colour table)."""
        first = next(iter(self._scenes.values()), None)
        colours = first.colours if first is not None else class_colours({}, self.classes, "index")
        return [
            {"index": i, "value": v, "name": n, "colour": [int(c) for c in colours[i, :3]]}
            for i, (v, n) in enumerate(zip(self.classes.values, self.classes.names, strict=True))
        ]


def map_files(folder: Path) -> list[Path]:
    """The maps of a folder: GeoTIFFs that are neither hidden (a write in progress) nor confidence layers."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in RASTER_SUFFIXES
        and not p.name.startswith(".")
        and not p.stem.endswith(CONFIDENCE_SUFFIX)
    )


def read_json(path: str | os.PathLike | None) -> dict | None:
    """A JSON report ``map_scenes`` wrote, or None when there is none (a broken one is named and skipped)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        log.warning("'%s' is not readable JSON, not shown: %s", path, err)
        return None


def class_colours(colormap: dict, classes: ClassTable, encoding: str) -> np.ndarray:
    """256 x 4 RGBA by class index: the map's colour table entry for each class's stored value, else the
    project's palette; every other index is transparent."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    keys = classes.values if encoding == "naic" else range(classes.num_classes)
    for i, key in enumerate(keys):
        rgb = colormap.get(int(key), (*PALETTE[i % len(PALETTE)], 255))[:3]
        lut[i] = (*rgb, 255)
    lut[IGNORE_INDEX] = 0
    return lut


def _read_map(path: Path, classes: ClassTable) -> dict:
    with rasterio.open(path) as src:
        if src.count != 1:
            raise ValueError(f"a map has one band, this file has {src.count}")
        encoding = ENCODINGS.get(src.dtypes[0])
        if encoding is None:
            raise ValueError(f"a map stores uint8 class indices or uint16 class values, not {src.dtypes[0]}")
        if src.crs is None:
            raise ValueError("it has no CRS, so it cannot be placed on a map")
        try:
            colormap = src.colormap(1)
        except ValueError:  # no colour table: the project's palette
            colormap = {}
        return {
            "name": path.stem,
            "map_path": path,
            "width": src.width,
            "height": src.height,
            "crs": src.crs.to_string(),
            "pixel_size": (abs(src.transform.a), abs(src.transform.e)),
            "pixel_unit": _unit(src.crs),
            "bounds": tuple(transform_bounds(src.crs, WGS84, *src.bounds, densify_pts=21)),
            "encoding": encoding,
            "colours": class_colours(colormap, classes, encoding),
            "zooms": _zooms(path),
            "version": path.stat().st_mtime_ns,
        }


def _unit(crs: CRS) -> str:
    if crs.is_geographic:
        return "°"
    unit = crs.linear_units
    return "m" if unit in ("metre", "meter", "m") else unit


def _zooms(path: Path) -> tuple[int, int]:
    with Reader(str(path)) as src:
        return int(src.minzoom), int(src.maxzoom)


def _sibling(path: Path, suffix: str) -> Path | None:
    for ext in RASTER_SUFFIXES:
        candidate = path.with_name(f"{path.stem}{suffix}{ext}")
        if candidate.is_file():
            return candidate
    return None


def _find_image(
    scenes: str | os.PathLike | None, name: str, bands: tuple[int, ...]
) -> tuple[ImageSource | None, str | None]:
    """(the scene's imagery, None) or (None, why it is not shown); (None, None) when there is none."""
    if scenes is None:
        return None, None
    path = _sibling(Path(scenes) / name, "")
    if path is None:
        return None, None
    try:
        with rasterio.open(path) as src:
            count, dtypes, crs = src.count, src.dtypes, src.crs
            overviews = bool(src.overviews(1)) or max(src.width, src.height) <= 1024
    except RasterioError as err:
        return None, f"imagery '{path}' is not readable, not shown: {err}"
    if crs is None:
        return None, f"imagery '{path}' has no CRS, not shown"
    chosen = (1, 1, 1) if count == 1 else bands
    if any(not 1 <= b <= count for b in chosen):
        return None, f"imagery '{path}' has {count} band(s), bands {list(bands)} are asked for: not shown"
    if not overviews:
        log.warning(
            "imagery '%s' has no overviews: zoomed-out tiles of it will be slow (gdaladdo adds them)", path
        )
    return ImageSource(path, chosen, dtypes[chosen[0] - 1], overviews), None


def _areas_for(scene: dict, table: dict | None, classes: ClassTable) -> tuple[dict, str]:
    """The area table ``map_scenes`` wrote when it describes this map, else one read back from the map."""
    size = scene["width"] * scene["height"]
    if (
        isinstance(table, dict)
        and table.get("mapped_pixels", -1) + table.get("nodata_pixels", -1) == size
        and len(table.get("classes", [])) == classes.num_classes
    ):
        return table, "from the area table map_scenes wrote"
    from naic_seg.core.scenes import area_table  # torch comes with it: only when a table must be read back

    log.info("Reading the class areas of '%s' back from the map", scene["map_path"])
    return area_table(scene["map_path"], classes, scene["encoding"]), "read back from the map"


def _scores_for(scores: dict | None) -> dict | None:
    """The scores the page shows (not the confusion matrix)."""
    if not isinstance(scores, dict):
        return None
    keys = ("mIoU", "FWIoU", "pixel_accuracy", "per_class_IoU", "pixels")
    return {k: scores[k] for k in keys if k in scores}
