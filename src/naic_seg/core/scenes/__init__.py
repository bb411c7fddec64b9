"""Whole-scene mapping: a GeoTIFF scene in, a Cloud-Optimized GeoTIFF land-cover map out.

The scene is never read whole and its logits are never held whole. Windows of ``window`` scene pixels,
``overlap`` apart, are read one row of windows at a time (a full-width strip of ``window`` rows, the next one
read in a thread meanwhile), batched through ``logits_fn`` and blended window by window (see
:class:`~naic_seg.core.scenes.geometry.Blender`): a pixel is final, arg-maxed and kept as one byte, as soon
as no later window weighs it; only the overlap rows shared with the next row of windows are carried as sums,
``classes x (window - stride) x width`` floats. Memory thus does not grow with the scene's height, and with
its width only by that carry (41 MB for 8 classes, window 256, overlap 0.25, 20,000 px wide).

Bad scenes are refused up front (:func:`check_scenes` lists every one, naming the file and the reason)
before any window is predicted; a read error found only while mapping names the file and the window. Maps
are written to a temporary GeoTIFF, converted to a COG (GDAL's COG driver, overviews by mode) and
renamed into place, so a killed run leaves no partial map.

The modules, by what they hold:

- ``options``: :class:`SceneOptions`, :class:`SceneInfo`, :class:`SceneError` and :func:`fit_to_model`
  (the window and nodata colour a model asks for);
- ``geometry``: window starts, the windows of an axis (:class:`WindowAxis`), blending weights and the
  :class:`Blender`, on arrays only;
- ``io``: finding and checking scenes, reading strips (bands, scaling, nodata fill), the map's encoding and
  the COG write;
- ``driver``: :func:`map_scene` and the mapping loop (:func:`map_into`);
- ``report``: areas, scores and quick-looks read back from the maps.

Every public name is importable from here: ``from naic_seg.core.scenes import map_scene``.
"""

from naic_seg.core.normalization import mean_colour
from naic_seg.core.scenes.driver import LogitsFn, SceneResult, map_into, map_scene
from naic_seg.core.scenes.geometry import (
    Blender,
    FinishedRows,
    WindowAxis,
    argmax,
    argmax_confidence,
    blend_profile,
    pad_to,
    window_starts,
)
from naic_seg.core.scenes.io import (
    COG_BLOCK,
    CONFIDENCE_NODATA,
    GDAL_CACHE_MB,
    check_scenes,
    colormap,
    fill_nodata,
    inspect_scene,
    label_path_for,
    map_profile,
    output_encoding,
    read_strips,
    split_scene_files,
    stretch_limits,
    strips_file,
    to_uint8,
    write_cog,
)
from naic_seg.core.scenes.options import (
    LABEL_SUFFIX,
    NODATA_FILLS,
    OUTPUT_VALUES,
    SCENE_SUFFIXES,
    ModelGeometry,
    SceneError,
    SceneInfo,
    SceneOptions,
    fit_to_model,
    model_window,
)
from naic_seg.core.scenes.report import area_table, map_to_index, pixel_area, quicklook, row_blocks, score_map

__all__ = [
    "COG_BLOCK",
    "CONFIDENCE_NODATA",
    "GDAL_CACHE_MB",
    "LABEL_SUFFIX",
    "NODATA_FILLS",
    "OUTPUT_VALUES",
    "SCENE_SUFFIXES",
    "Blender",
    "FinishedRows",
    "LogitsFn",
    "ModelGeometry",
    "SceneError",
    "SceneInfo",
    "SceneOptions",
    "SceneResult",
    "WindowAxis",
    "area_table",
    "argmax",
    "argmax_confidence",
    "blend_profile",
    "check_scenes",
    "colormap",
    "fill_nodata",
    "fit_to_model",
    "inspect_scene",
    "label_path_for",
    "map_into",
    "map_profile",
    "map_scene",
    "map_to_index",
    "mean_colour",
    "model_window",
    "output_encoding",
    "pad_to",
    "pixel_area",
    "quicklook",
    "read_strips",
    "row_blocks",
    "score_map",
    "split_scene_files",
    "stretch_limits",
    "strips_file",
    "to_uint8",
    "window_starts",
    "write_cog",
]
