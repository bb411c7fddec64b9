"""Class polygons of a land-cover map: sieved to a minimum mapping unit, vectorised by blocks of rows, the
polygons of one class that meet at a block border dissolved into one, written to a GeoPackage.

Memory: a block of ``block_rows`` rows (plus its halo, see below) is read, sieved and vectorised at a time.
Polygons are traced in pixel coordinates (integers, exact in floating point), so two pieces of one region on
either side of a block border share their border edge exactly and their union leaves no seam; a polygon goes
to the file, in the map's CRS, as soon as no piece of it touches the last row vectorised. What stays in
memory is the pieces of the polygons still open at that row: about one block of geometry, more only where a
single region (a forest, a lake) itself spans many blocks.

Sieving by blocks (``rasterio.features.sieve``, 4-connected, GDAL's sieve: a patch of fewer than
``min_pixels`` pixels takes the class of its largest neighbour) would judge a patch cut by a block border by
the part it sees. Each block is therefore sieved with a halo of ``min(min_pixels, max_halo_rows)`` rows
above and below, and only its own rows are kept. A patch smaller than ``min_pixels`` spans fewer rows than
that, so whenever the halo is ``min_pixels`` rows it lies wholly in the window and is removed exactly as a
whole-map sieve removes it; a patch that reaches the window's cut top or bottom row may be part of a bigger
one, so it is never removed there (without this a long road, big as a whole, would vanish block by block).
What can differ from a whole-map sieve: (1) the class a removed patch takes when its largest neighbours are
themselves cut by the halo (the sizes compared are the parts seen); (2) with a halo shorter than
``min_pixels`` (minimum areas over ``max_halo_rows`` pixels), a thin patch smaller than the unit but taller
than the halo may be kept. The map itself is not changed.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from rasterio import features
from rasterio.windows import Window

from naic_seg.core.atomic import atomic_path
from naic_seg.core.labels import IGNORE_INDEX, ClassTable
from naic_seg.core.options import Options
from naic_seg.core.scenes import GDAL_CACHE_MB, SceneError, map_to_index, output_encoding, pixel_area

BLOCK_ROWS = 512
MAX_HALO_ROWS = 512
WRITE_BATCH = 20_000  # polygons per GeoPackage append


@dataclass(frozen=True)
class VectorOptions(Options):
    """``map_scenes.vector``: ``min_area_m2``, the minimum mapping unit (0: every patch, even one pixel).
    ``block_rows`` and ``max_halo_rows`` are set from Python only (tests, benchmarks)."""

    min_area_m2: float = 0.0
    block_rows: int = BLOCK_ROWS
    max_halo_rows: int = MAX_HALO_ROWS

    internal_keys = ("block_rows", "max_halo_rows")

    def check(self) -> None:
        if not self.min_area_m2 >= 0:
            raise ValueError(f"min_area_m2 must be a number >= 0, got {self.min_area_m2!r}")
        if self.block_rows < 1 or self.max_halo_rows < 0:
            raise ValueError(f"block_rows must be >= 1 and max_halo_rows >= 0, got {self}")


def min_pixels(min_area_m2: float, crs, transform, name: str) -> int:
    """The minimum mapping unit in pixels (a patch of fewer is sieved away); 0 when there is none."""
    if min_area_m2 == 0:
        return 0
    area, note = pixel_area(crs, transform)
    if area is None:
        raise SceneError(f"'{name}': vector.min_area_m2 needs pixel areas in square metres, but {note}")
    return math.ceil(min_area_m2 / area - 1e-9)


def check_vector_scenes(paths, options: VectorOptions) -> None:
    """Each scene's minimum mapping unit can be turned into pixels (a projected CRS), checked up front."""
    problems = []
    for path in paths:
        with rasterio.open(path) as src:
            try:
                min_pixels(options.min_area_m2, src.crs, src.transform, str(path))
            except SceneError as err:
                problems.append(str(err))
    if problems:
        raise SceneError(f"{len(problems)} scene(s) cannot be vectorised:\n  " + "\n  ".join(problems))


def sieve_window(index: np.ndarray, size: int, cut_top: bool, cut_bottom: bool) -> np.ndarray:
    """Class indices (nodata 255) with patches under ``size`` pixels merged into their largest neighbour,
    except patches reaching a row that cuts a bigger map (``cut_top``/``cut_bottom``), kept as they are."""
    valid = index != IGNORE_INDEX
    if size <= 1 or not valid.any():
        return index
    sieved = features.sieve(index, size, mask=valid, connectivity=4)
    sieved[~valid] = IGNORE_INDEX
    removed = sieved != index
    if (cut_top or cut_bottom) and removed.any():
        last = index.shape[0]
        reaching = [
            geom
            for geom, _ in features.shapes(index, mask=removed, connectivity=4)
            if (cut_top and _rows(geom)[0] == 0) or (cut_bottom and _rows(geom)[1] == last)
        ]
        if reaching:
            keep = features.geometry_mask(reaching, index.shape, rasterio.Affine.identity(), invert=True)
            sieved[keep] = index[keep]
    return sieved


def _rows(geom: dict) -> tuple[float, float]:
    """(first row, row after the last) of a GeoJSON polygon in pixel coordinates (its outer ring suffices)."""
    ys = [y for _, y in geom["coordinates"][0]]
    return min(ys), max(ys)


def sieved_blocks(
    src, classes: ClassTable, output_values: str, size: int, options: VectorOptions
) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, sieved class indices) of each block of rows of the open map ``src``."""
    halo = min(size, options.max_halo_rows) if size > 1 else 0
    for y0 in range(0, src.height, options.block_rows):
        y1 = min(y0 + options.block_rows, src.height)
        top, bottom = max(0, y0 - halo), min(src.height, y1 + halo)
        stored = src.read(1, window=Window(0, top, src.width, bottom - top))
        index = map_to_index(stored, classes, output_values)
        sieved = sieve_window(index, size, top > 0, bottom < src.height)
        yield y0, sieved[y0 - top : y1 - top]


@dataclass
class _Region:
    """A polygon still open at the last row vectorised: its pieces so far and those touching that row."""

    value: int
    pieces: list = field(default_factory=list)
    frontier: list = field(default_factory=list)


class _Stitcher:
    """Joins the pieces that one class's region leaves in consecutive blocks (pixel coordinates).

    Two pieces of one class belong together when they share a stretch of the border row (4-connectivity: a
    shared corner does not join, as within a block). ``add_block`` returns the regions it closed: those with
    no piece touching the block's last row.
    """

    def __init__(self, width: int):
        self.width = width
        self.open: list[_Region] = []

    def add_block(
        self, y0: int, y1: int, pieces: list[tuple[int, shapely.Polygon]], last: bool
    ) -> list[_Region]:
        touching_top = [i for i, (_, p) in enumerate(pieces) if p.bounds[1] == y0]
        links = self._links(y0, pieces, touching_top)
        parent = list(range(len(self.open) + len(pieces)))  # union-find: open regions first, then pieces

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in links:
            parent[root(a)] = root(b)
        merged: dict[int, _Region] = {}
        for i, region in enumerate(self.open):
            target = merged.setdefault(root(i), _Region(region.value))
            target.pieces += region.pieces
        for i, (value, piece) in enumerate(pieces, start=len(self.open)):
            target = merged.setdefault(root(i), _Region(value))
            target.pieces.append(piece)
            if piece.bounds[3] == y1 and not last:
                target.frontier.append(piece)
        self.open = [r for r in merged.values() if r.frontier]
        return [r for r in merged.values() if not r.frontier]

    def _links(self, y0: int, pieces, touching_top: list[int]) -> list[tuple[int, int]]:
        """(open region, piece) pairs of one class that share a stretch of row ``y0``."""
        if not self.open or not touching_top:
            return []
        owners, strips = [], []
        for i, region in enumerate(self.open):
            for piece in region.frontier:
                owners.append((i, region.value))
                strips.append(shapely.clip_by_rect(piece, 0, y0 - 0.5, self.width, y0))
        tree = shapely.STRtree(strips)
        links = []
        for k in touching_top:
            value, piece = pieces[k]
            strip = shapely.clip_by_rect(piece, 0, y0, self.width, y0 + 0.5)
            for j in tree.query(strip, predicate="intersects"):
                owner, owner_value = owners[j]
                if owner_value == value and shapely.intersection(strips[j], strip).length > 0:
                    links.append((owner, len(self.open) + k))
        return links


class _PolygonWriter:
    """Closed regions -> GeoPackage features (class, value, pixels, hectares) in the map's CRS, in batches."""

    FIELDS = ("class", "value", "pixels", "hectares")

    def __init__(self, path, layer: str, src, classes: ClassTable, output_values: str):
        self.path, self.layer, self.crs = path, layer, src.crs.to_wkt() if src.crs else None
        self.names, self.lut = classes.names, output_encoding(classes, output_values)[2]
        self.area = pixel_area(src.crs, src.transform)[0]
        t = src.transform  # pixel (col, row) -> CRS (x, y)
        self.matrix, self.offset = np.array([[t.a, t.d], [t.b, t.e]]), np.array([t.c, t.f])
        self.batch: list[tuple[int, shapely.Polygon]] = []
        self.written = 0
        self.pixels = np.zeros(classes.num_classes, dtype=np.int64)

    def add(self, regions: list[_Region]) -> None:
        for region in regions:
            whole = region.pieces[0] if len(region.pieces) == 1 else shapely.union_all(region.pieces)
            self.batch += [(region.value, part) for part in shapely.get_parts(shapely.simplify(whole, 0))]
        if len(self.batch) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch and self.written:
            return
        index = np.array([v for v, _ in self.batch], dtype=np.int64)
        geoms = np.array([g for _, g in self.batch], dtype=object)
        pixels = np.rint(shapely.area(geoms)).astype(np.int64)
        np.add.at(self.pixels, index, pixels)
        placed = shapely.transform(geoms, lambda xy: xy @ self.matrix + self.offset)
        hectares = pixels * (np.nan if self.area is None else self.area / 1e4)
        names = np.array([self.names[i] for i in index], dtype=object)
        columns = [names, self.lut[index].astype(np.int32), pixels, hectares]
        with warnings.catch_warnings():  # the temporary's name ends in .tmp until it is renamed to .gpkg
            warnings.filterwarnings("ignore", message="The filename extension should be 'gpkg'")
            self._write(placed, columns)
        self.written += len(self.batch)
        self.batch = []

    def _write(self, placed: np.ndarray, columns: list[np.ndarray]) -> None:
        pyogrio.raw.write(
            self.path,
            shapely.to_wkb(placed),
            field_data=columns,
            fields=list(self.FIELDS),
            layer=self.layer,
            driver="GPKG",
            geometry_type="Polygon",
            crs=self.crs,
            append=self.written > 0,
        )


def vectorise_map(
    map_path: str | os.PathLike,
    target: str | os.PathLike,
    classes: ClassTable,
    output_values: str,
    options: VectorOptions,
) -> dict:
    """The map's polygons (sieved to ``options.min_area_m2``) into the GeoPackage ``target``, atomically:
    one layer named after the map, one feature per polygon with its ``class`` name, stored ``value``,
    ``pixels`` and ``hectares`` (NaN in a CRS without metric pixel areas). A map of nodata only gives an
    empty layer. Returns what was written: polygons, pixels per class, minimum unit in pixels, seconds."""
    started, map_path = time.perf_counter(), os.fspath(map_path)
    layer = os.path.splitext(os.path.basename(map_path))[0]
    # GDAL's block cache (5 % of RAM by default) would keep every block read: memory would grow with the map.
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB),
        rasterio.open(map_path) as src,
        atomic_path(target) as tmp,
    ):
        size = min_pixels(options.min_area_m2, src.crs, src.transform, map_path)
        writer = _PolygonWriter(tmp, layer, src, classes, output_values)
        stitcher = _Stitcher(src.width)
        for y0, block in sieved_blocks(src, classes, output_values, size, options):
            y1 = y0 + block.shape[0]
            shifted = rasterio.Affine.translation(0, y0)
            traced = features.shapes(block, mask=block != IGNORE_INDEX, connectivity=4, transform=shifted)
            pieces = [(int(v), shapely.Polygon(g["coordinates"][0], g["coordinates"][1:])) for g, v in traced]
            writer.add(stitcher.add_block(y0, y1, pieces, last=y1 == src.height))
        writer.flush()
    return {
        "polygons": writer.written,
        "class_pixels": writer.pixels.tolist(),
        "min_pixels": size,
        "seconds": time.perf_counter() - started,
    }
