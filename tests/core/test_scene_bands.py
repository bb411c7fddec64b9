"""A scene mapped in bands and joined is the scene mapped whole, pixel for pixel, seams included."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from naic_seg.core.scene_bands import join_bands, map_band, merged_result, plan_bands
from naic_seg.core.scenes import SceneOptions, inspect_scene, map_scene
from tests.core.test_scenes import CLASSES, conv_logits, random_scene, write_scene


def noisy_conv_logits(seed=0):
    """Integer conv logits plus float noise that depends on the pixel only: window blends are not exact
    integers, so the seams are only identical if each pixel's sums are added in the same order."""
    conv = conv_logits(seed=seed)

    def fn(images):
        out = conv(images)
        return out / 7.0 + (images.float().mean(1, keepdim=True) * 0.1234567).sin()

    return fn


def map_in_bands(scene, folder, fn, options, split_above_mpx, name="banded"):
    info = inspect_scene(scene, options)
    bands = plan_bands(info, options, split_above_mpx)
    parts, results = [], []
    for band in bands:
        path = folder / f".{name}-band{band.index}.tif"
        results.append(map_band(scene, path, fn, CLASSES, options, band))
        parts.append((band, path))
    target = folder / f"{name}.tif"
    join_bands(scene, parts[::-1], target, CLASSES, options)  # any order
    return target, bands, merged_result(info.name, results, 0.0)


@pytest.mark.parametrize(
    ("h", "w", "window", "overlap", "split"),
    [
        (700, 333, 64, 0.25, 0.05),
        (611, 290, 48, 0.5, 0.04),
        (515, 257, 64, 0.0, 0.03),
        (300, 200, 64, 0.3, 0.02),
    ],
)
def test_bands_joined_equal_the_whole_scene_map(tmp_path, h, w, window, overlap, split):
    data = random_scene(h, w, seed=h)
    data[:, 100:180, :120] = 0  # nodata that skipped windows and a band border both cross
    scene = write_scene(tmp_path / "s.tif", data, nodata=0)
    opts = SceneOptions(window=window, overlap=overlap, batch_size=3)
    whole = map_scene(scene, tmp_path / "whole.tif", noisy_conv_logits(), CLASSES, opts)
    banded, bands, result = map_in_bands(scene, tmp_path, noisy_conv_logits(), opts, split)
    assert len(bands) >= 3
    assert [b.first_row for b in bands[1:]] == [b.end_row for b in bands[:-1]]
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(banded) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert (a.profile | {"blockxsize": 0}) == (b.profile | {"blockxsize": 0})
        assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and a.colormap(1) == b.colormap(1)
        assert a.overviews(1) == b.overviews(1)
    assert (result.windows, result.windows_skipped) == (whole.windows, whole.windows_skipped)
    assert (result.class_pixels, result.nodata_pixels) == (whole.class_pixels, whole.nodata_pixels)


def test_without_the_row_above_a_band_its_seam_rows_differ(tmp_path, monkeypatch):
    """The test above can fail: when the row of windows above a band adds nothing (read as all nodata), the
    band's first rows lack that row's blended share and differ from the whole-scene map there."""
    import naic_seg.core.scenes.driver as driver

    data = random_scene(400, 200, seed=5)
    scene = write_scene(tmp_path / "s.tif", data)
    opts = SceneOptions(window=64, overlap=0.5, batch_size=4)
    map_scene(scene, tmp_path / "whole.tif", noisy_conv_logits(), CLASSES, opts)
    second = plan_bands(inspect_scene(scene, opts), opts, 0.03)[1]
    strips = driver.read_strips

    def without_the_row_above(*args):
        rows = iter(strips(*args))
        image, mask = next(rows)
        yield image, np.zeros_like(mask)
        yield from rows

    monkeypatch.setattr(driver, "read_strips", without_the_row_above)
    map_band(scene, tmp_path / "band.tif", noisy_conv_logits(), CLASSES, opts, second)
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(tmp_path / "band.tif") as b:
        rows = slice(second.first_row, second.end_row)
        differ = (a.read(1)[rows] != b.read(1)[rows]).any(1)
    stride = opts.stride
    assert differ[: 64 - stride].any() and not differ[64 - stride :].any()  # the seam rows only


def test_small_scenes_are_not_split_and_bands_are_whole_rows_of_windows(tmp_path):
    scene = write_scene(tmp_path / "s.tif", random_scene(500, 400))
    opts = SceneOptions(window=64, overlap=0.25)
    info = inspect_scene(scene, opts)
    assert plan_bands(info, opts, None) is None and plan_bands(info, opts, 0.2) is None
    bands = plan_bands(info, opts, 0.05)
    assert len(bands) == 4 and bands[0].first_row == 0 and bands[-1].end_row == 500
    assert sum(len(b.window_rows) for b in bands) == 11  # window_starts(500, 64, 48): 11 rows of windows
    assert bands[1].describe() == f"band 2/4 (rows {bands[1].first_row}..{bands[1].end_row})"


def test_a_join_with_a_missing_band_is_refused(tmp_path):
    scene = write_scene(tmp_path / "s.tif", random_scene(300, 100))
    opts = SceneOptions(window=64, overlap=0.25)
    bands = plan_bands(inspect_scene(scene, opts), opts, 0.01)
    parts = [(b, tmp_path / f"b{b.index}.tif") for b in bands]
    for band, path in parts:
        map_band(scene, path, conv_logits(), CLASSES, opts, band)
    with pytest.raises(ValueError, match="do not cover the 300 rows"):
        join_bands(scene, parts[:1] + parts[2:], tmp_path / "m.tif", CLASSES, opts)
    assert not (tmp_path / "m.tif").exists()
