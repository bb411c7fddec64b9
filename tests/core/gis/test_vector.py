"""Class polygons: sieved like a whole-map sieve, one polygon per region however many blocks it crosses,
areas equal to the sieved map's, in the map's CRS; a nodata-only map gives an empty layer."""

from __future__ import annotations

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio import features
from rasterio.crs import CRS
from rasterio.transform import from_origin

from naic_seg.core.gis.vector import (
    VectorOptions,
    check_vector_scenes,
    sieved_blocks,
    vectorise_map,
)
from naic_seg.core.scenes import SceneError
from tests.core.test_scenes import CLASSES, CRS_UTM

TRANSFORM = from_origin(500_000.0, 4_000_000.0, 0.5, 0.5)  # 0.25 m² pixels


def write_map(path, index, crs=CRS_UTM, transform=TRANSFORM):
    h, w = index.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint8", "nodata": 255}
    with rasterio.open(path, "w", crs=crs, transform=transform, **profile) as dst:
        dst.write(index[None])
    return path


def read_layer(path):
    meta, _, wkb, columns = pyogrio.raw.read(path)
    return meta, shapely.from_wkb(wkb), dict(zip(meta["fields"], columns, strict=True))


def blocky_map(seed=0):
    """Rectangles of classes 0..7 with specks of other classes (1, 2 and 3 pixels) inside them, off their
    edges: each speck has one neighbour, so the class it takes does not depend on what a window sees of the
    rectangles around (where two neighbours compete, it can: see naic_seg.core.gis.vector)."""
    rng = np.random.default_rng(seed)
    index = np.zeros((300, 240), dtype=np.uint8)
    for k, (y, x) in enumerate((y, x) for y in range(0, 300, 60) for x in range(0, 240, 80)):
        index[y : y + 60, x : x + 80] = k % 8
    for y, x in zip(rng.integers(0, 300, 200), rng.integers(0, 240, 200), strict=True):
        if 2 <= y % 60 <= 57 and 2 <= x % 80 <= 74:
            index[y, x : x + rng.integers(1, 4)] = (index[y, x] + 3) % 8
    index[280:, :40] = 255  # some nodata
    return index


def whole_map_sieve(index, size):
    valid = index != 255
    sieved = features.sieve(index, size, mask=valid, connectivity=4)
    sieved[~valid] = 255
    return sieved


def test_polygon_areas_per_class_equal_the_sieved_maps_and_block_sieving_equals_a_whole_map_sieve(tmp_path):
    index = blocky_map()
    path = write_map(tmp_path / "m.tif", index)
    options = VectorOptions(min_area_m2=1.0, block_rows=64)  # 4 pixels: every speck goes
    expected = whole_map_sieve(index, 4)
    with rasterio.open(path) as src:
        by_blocks = np.concatenate([b for _, b in sieved_blocks(src, CLASSES, "index", 4, options)])
    np.testing.assert_array_equal(by_blocks, expected)
    assert (expected != index).sum() > 100  # the sieve did remove the specks

    summary = vectorise_map(path, tmp_path / "m.gpkg", CLASSES, "index", options)
    meta, geoms, columns = read_layer(tmp_path / "m.gpkg")
    counts = np.bincount(expected[expected != 255], minlength=8)
    assert summary["class_pixels"] == counts.tolist() and summary["min_pixels"] == 4
    assert len(geoms) == summary["polygons"]
    for k, name in enumerate(CLASSES.names):
        mine = columns["class"] == name
        assert (columns["value"][mine] == k).all()
        assert columns["pixels"][mine].sum() == counts[k]
        area_pixels = shapely.area(geoms[mine]).sum() / 0.25
        assert abs(area_pixels - counts[k]) <= mine.sum()  # within a pixel per polygon (here: exact)
        np.testing.assert_allclose(columns["hectares"][mine].sum(), counts[k] * 0.25 / 1e4)


def test_a_region_crossing_block_borders_is_one_polygon_without_seams_in_the_maps_crs(tmp_path):
    index = np.zeros((300, 200), dtype=np.uint8)
    index[50:250, 20:80] = 3  # crosses the block borders at rows 64, 128 and 192
    index[:, 150:] = 255
    path = write_map(tmp_path / "m.tif", index)
    vectorise_map(path, tmp_path / "m.gpkg", CLASSES, "index", VectorOptions(block_rows=64))
    meta, geoms, columns = read_layer(tmp_path / "m.gpkg")
    assert CRS.from_user_input(meta["crs"]) == CRS_UTM
    assert sorted(columns["class"]) == ["farmland", "water"]
    (farmland,) = geoms[columns["class"] == "farmland"]
    (water,) = geoms[columns["class"] == "water"]
    x0, y0 = TRANSFORM @ (20, 250)
    x1, y1 = TRANSFORM @ (80, 50)
    assert farmland.equals(shapely.box(x0, y0, x1, y1))
    assert len(farmland.exterior.coords) == 5  # four corners: no vertex left on a block border
    assert len(water.interiors) == 1 and water.area == pytest.approx((150 * 300 - 60 * 200) * 0.25)


def test_a_long_thin_region_bigger_than_the_unit_survives_halos_shorter_than_it(tmp_path):
    """A road 2 px wide and 280 rows long (560 px) with a 400 px unit and 16-row halos: no window sees more
    than 2 x (64 + 32) px of it, yet it is kept, as a whole-map sieve keeps it; a compact patch under the
    unit that crosses a block border goes, as there."""
    index = np.full((300, 120), 5, dtype=np.uint8)
    index[10:290, 30:32] = 1  # the road
    index[122:134, 80:90] = 1  # 120 px, 12 rows: within a halo of the border at row 128
    path = write_map(tmp_path / "m.tif", index)
    options = VectorOptions(min_area_m2=100.0, block_rows=64, max_halo_rows=16)
    with rasterio.open(path) as src:
        by_blocks = np.concatenate([b for _, b in sieved_blocks(src, CLASSES, "index", 400, options)])
    np.testing.assert_array_equal(by_blocks, whole_map_sieve(index, 400))
    vectorise_map(path, tmp_path / "m.gpkg", CLASSES, "index", options)
    _, geoms, columns = read_layer(tmp_path / "m.gpkg")
    assert columns["pixels"][columns["class"] == "transport"].tolist() == [560]


def test_a_thin_patch_under_the_unit_but_taller_than_the_halo_is_kept_as_documented(tmp_path):
    """The price of a bounded halo: 2 x 50 px (under a 400 px unit) spans more rows than a 16-row halo, so
    the window that sees it reach its cut edge cannot tell it from a long road and keeps it. With the
    default halo (min(unit, 512) rows) it is judged whole and removed."""
    index = np.full((300, 120), 5, dtype=np.uint8)
    index[100:150, 80:82] = 1
    path = write_map(tmp_path / "m.tif", index)

    def sieved(max_halo_rows):
        options = VectorOptions(min_area_m2=100.0, block_rows=64, max_halo_rows=max_halo_rows)
        with rasterio.open(path) as src:
            return np.concatenate([b for _, b in sieved_blocks(src, CLASSES, "index", 400, options)])

    assert (sieved(16) == 1).sum() > 0
    np.testing.assert_array_equal(sieved(512), whole_map_sieve(index, 400))
    assert (whole_map_sieve(index, 400) == 5).all()


def test_regions_touching_at_a_corner_on_a_block_border_stay_apart_as_within_a_block(tmp_path):
    index = np.zeros((128, 64), dtype=np.uint8)
    index[54:64, 10:20] = 2
    index[64:74, 20:30] = 2  # meets the first at one corner, on the border row 64
    index[30:40, 40:50] = 2
    index[40:50, 50:60] = 2  # the same, inside a block
    path = write_map(tmp_path / "m.tif", index)
    vectorise_map(path, tmp_path / "m.gpkg", CLASSES, "index", VectorOptions(block_rows=64))
    _, _, columns = read_layer(tmp_path / "m.gpkg")
    assert columns["pixels"][columns["class"] == "building"].tolist() == [100] * 4


def test_a_map_of_nodata_only_gives_an_empty_layer(tmp_path):
    path = write_map(tmp_path / "empty.tif", np.full((100, 80), 255, dtype=np.uint8))
    summary = vectorise_map(path, tmp_path / "e.gpkg", CLASSES, "index", VectorOptions(min_area_m2=5.0))
    meta, geoms, columns = read_layer(tmp_path / "e.gpkg")
    assert summary["polygons"] == 0 and len(geoms) == 0
    assert list(meta["fields"]) == ["class", "value", "pixels", "hectares"]
    assert CRS.from_user_input(meta["crs"]) == CRS_UTM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.gpkg", "empty.tif"]  # no temporary left


def test_naic_values_are_kept_as_the_polygons_value(tmp_path):
    index = np.zeros((40, 40), dtype=np.uint16)
    index[:, 20:] = 600
    index[:, :20] = 100
    h, w = index.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint16", "nodata": 0}
    with rasterio.open(tmp_path / "n.tif", "w", crs=CRS_UTM, transform=TRANSFORM, **profile) as dst:
        dst.write(index[None])
    vectorise_map(tmp_path / "n.tif", tmp_path / "n.gpkg", CLASSES, "naic", VectorOptions())
    _, _, columns = read_layer(tmp_path / "n.gpkg")
    assert dict(zip(columns["class"], columns["value"], strict=True)) == {"water": 100, "forest": 600}


def test_a_minimum_unit_needs_metric_pixels_and_options_refuse_unknown_keys(tmp_path):
    geo = write_map(
        tmp_path / "geo.tif",
        np.zeros((20, 20), np.uint8),
        CRS.from_epsg(4326),
        from_origin(116, 40, 1e-5, 1e-5),
    )
    with pytest.raises(SceneError, match=r"1 scene\(s\) cannot be vectorised:\n  '.*geo\.tif'.*geographic"):
        check_vector_scenes([geo], VectorOptions(min_area_m2=10))
    check_vector_scenes([geo], VectorOptions(min_area_m2=0))  # no unit: pixels are enough
    typo = "unknown key 'min_area' in map_scenes.vector; did you mean 'min_area_m2'"
    with pytest.raises(ValueError, match=typo):
        VectorOptions.from_params({"min_area": 5}, "map_scenes.vector")
    with pytest.raises(ValueError, match="^map_scenes.vector.min_area_m2 must be a number >= 0, got -1"):
        VectorOptions.from_params({"min_area_m2": -1}, "map_scenes.vector")
    with pytest.raises(ValueError, match="unknown key 'block_rows' in map_scenes.vector"):  # Python only
        VectorOptions.from_params({"min_area_m2": 1, "block_rows": 8}, "map_scenes.vector")
    assert VectorOptions.from_params({"min_area_m2": 25}, "map_scenes.vector").min_area_m2 == 25
