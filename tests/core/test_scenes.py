"""Scene mapping on small synthetic GeoTIFFs written here, with tiny convolutions as models."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

from naic_seg.core.labels import ClassTable
from naic_seg.core.scenes import (
    SceneError,
    SceneOptions,
    WindowAxis,
    area_table,
    blend_profile,
    check_scenes,
    map_scene,
    quicklook,
    score_map,
    split_scene_files,
    window_starts,
)

CLASSES = ClassTable.naic()
CRS_UTM = CRS.from_epsg(32650)


def write_scene(path, data, nodata=None, crs=CRS_UTM, transform=None, tiled=True):
    """``data``: bands x h x w."""
    count, h, w = data.shape
    transform = transform or from_origin(500_000.0, 4_000_000.0, 0.5, 0.5)
    extra = {"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled and h >= 256 and w >= 256 else {}
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="deflate",
        **extra,
    ) as dst:
        dst.write(data)
    return path


def random_scene(h, w, bands=3, seed=0, dtype=np.uint8, high=256):
    rng = np.random.default_rng(seed)
    return rng.integers(1, high, size=(bands, h, w)).astype(dtype)


def conv_logits(k=5, seed=0, num_classes=8):
    """A translation-equivariant model with integer weights: its logits are exact integers, so the blend of
    agreeing windows reproduces them bit for bit and arg-max ties break the same way."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(-3, 4, (num_classes, 3, k, k), generator=g).float()

    def fn(images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        return F.conv2d(images.float(), weight, padding=k // 2)

    fn.calls = 0
    return fn


def counting(fn):
    def wrapped(images):
        wrapped.windows += images.shape[0]
        return fn(images)

    wrapped.windows = 0
    return wrapped


def whole_scene_map(fn, data):
    return fn(torch.from_numpy(data[None].copy()))[0].argmax(0).numpy().astype(np.uint8)


def test_window_starts_and_blend_profile():
    assert window_starts(100, 64, 48) == [0, 36]
    assert window_starts(50, 64, 48) == [0]
    assert window_starts(64, 64, 48) == [0]
    p_left, p_right = blend_profile(64, 16, False, True), blend_profile(64, 16, True, False)
    assert p_left[0] == 1 and p_left[-4:].sum() == 0 and p_right[:4].sum() == 0
    # neighbours overlapping by exactly 16 px: weights add up to 1 over the overlap
    np.testing.assert_allclose(p_left[48:] + p_right[:16], 1.0, atol=1e-6)


@pytest.mark.parametrize("length", [40, 64, 65, 100, 111, 112, 113, 160, 257, 1000])
@pytest.mark.parametrize(("window", "overlap"), [(64, 0.25), (64, 0.5), (48, 0.3), (32, 0.0)])
def test_windows_weigh_every_pixel_once_in_all_and_carry_only_the_overlap(length, window, overlap):
    """The blend weights add up to 1 at every pixel (the last window, flush with the scene's end, mirrors its
    neighbour's ramp however little it is offset), each pixel is finished by exactly one window, and no
    more than ``window - stride`` pixels are ever carried from one window to the next: the bound on the
    mapper's memory."""
    stride = SceneOptions(window=window, overlap=overlap).stride
    axis = WindowAxis.of(length, window, stride)
    total = np.zeros(length)
    finished = np.zeros(length, dtype=int)
    for start, lead, end, profile in zip(axis.starts, axis.leads, axis.ends, axis.profiles, strict=True):
        total[start : start + axis.span] += profile
        finished[start + lead : start + end] += 1
        assert 0 <= lead < end <= axis.span
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert (finished == 1).all()
    assert axis.carried <= window - stride
    later = [s + lead for s, lead in zip(axis.starts[1:], axis.leads[1:], strict=True)]
    for prev, first_weighed in zip(axis.starts, later, strict=False):  # a carry fits in window - stride
        assert prev + axis.span - first_weighed <= window - stride


def test_the_window_and_nodata_colour_follow_the_model_unless_a_window_is_asked_for():
    """Windows of the training tiles' side (each resized to the model's input as its tiles were), else of
    the model's input side; a window asked for wins. Nodata is painted in the colour that the model's own
    normalisation maps to 0 (ImageNet's mean for ResNets, mid-grey for EfficientNet-Lite)."""
    from types import SimpleNamespace

    from naic_seg.core.normalization import input_normalization
    from naic_seg.core.scenes import fit_to_model

    lite = SimpleNamespace(
        tile_size=256, input_size=192, normalization=input_normalization("tu-tf_efficientnet_lite0")
    )
    resnet = SimpleNamespace(tile_size=None, input_size=192, normalization=input_normalization("resnet18"))
    asked = SceneOptions(window=512, overlap=0.5)
    fitted = fit_to_model(SceneOptions(overlap=0.5), lite)
    assert (fitted.window, fitted.stride, fitted.fill_colour.ravel().tolist()) == (256, 128, [128, 128, 128])
    assert fit_to_model(asked, lite).window == 512
    fitted = fit_to_model(SceneOptions(), resnet)
    assert (fitted.window, fitted.fill_colour.ravel().tolist()) == (192, [124, 116, 104])


def test_overlap_above_a_half_is_refused():
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 0.5\]"):
        SceneOptions(window=64, overlap=0.6)


def test_a_scene_that_is_all_nodata_is_mapped_as_nodata_without_a_forward_pass(tmp_path):
    scene = write_scene(tmp_path / "empty.tif", np.zeros((3, 300, 500), dtype=np.uint8), nodata=0)
    fn = counting(conv_logits())
    result = map_scene(scene, tmp_path / "empty_map.tif", fn, CLASSES, SceneOptions(window=64, batch_size=4))
    assert fn.windows == 0 and result.windows_skipped == result.windows
    with rasterio.open(tmp_path / "empty_map.tif") as src:
        assert (src.read(1) == 255).all()
    assert result.nodata_pixels == 300 * 500 and sum(result.class_pixels) == 0


def test_map_keeps_georeference_size_and_is_a_cog(tmp_path):
    data = random_scene(700, 650)
    transform = from_origin(612_345.0, 3_456_789.0, 0.5, 0.5)
    scene = write_scene(tmp_path / "scene.tif", data, transform=transform)
    out = tmp_path / "maps" / "scene.tif"
    result = map_scene(scene, out, conv_logits(), CLASSES, SceneOptions(window=128, batch_size=4))
    with rasterio.open(out) as src:
        assert (src.width, src.height, src.count) == (650, 700, 1)
        assert src.crs == CRS_UTM and src.transform == transform
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.compression.name.lower() == "deflate"
        assert src.block_shapes[0] == (512, 512)
        assert src.overviews(1) == [2]
        cmap = src.colormap(1)
        assert cmap[0][:3] == (31, 119, 180) and cmap[2][:3] == (214, 39, 40)
        written = src.read(1)
    np.testing.assert_array_equal(written, whole_scene_map(conv_logits(), data))
    assert result.class_pixels == np.bincount(written.ravel(), minlength=8).tolist()
    assert not [p for p in out.parent.iterdir() if p.name != "scene.tif"]  # no temporary left


@pytest.mark.parametrize(("h", "w", "window", "overlap"), [(203, 157, 64, 0.25), (131, 277, 48, 0.5)])
def test_blended_map_equals_a_whole_scene_pass(tmp_path, h, w, window, overlap):
    """Odd sizes, windows not dividing the scene: seamless, because logits agreeing across windows blend
    back to themselves and the conv's border effects (2 px) fall in the zero-weight margins."""
    data = random_scene(h, w, seed=h)
    scene = write_scene(tmp_path / "odd.tif", data)
    fn = counting(conv_logits(seed=w))
    out = tmp_path / "odd_map.tif"
    result = map_scene(scene, out, fn, CLASSES, SceneOptions(window=window, overlap=overlap, batch_size=3))
    stride = int(np.ceil(window * (1 - overlap)))
    assert (
        fn.windows
        == result.windows
        == len(window_starts(h, window, stride)) * len(window_starts(w, window, stride))
    )
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), whole_scene_map(conv_logits(seed=w), data))


def test_without_blending_margins_window_borders_show(tmp_path):
    """The same model with windows that abut (overlap 0): its zero padding at window borders changes the
    map there, which is what the seamlessness test above would catch."""
    data = random_scene(128, 128, seed=3)
    scene = write_scene(tmp_path / "s.tif", data)
    map_scene(scene, tmp_path / "m.tif", conv_logits(), CLASSES, SceneOptions(window=64, overlap=0.0))
    with rasterio.open(tmp_path / "m.tif") as src:
        assert (src.read(1) != whole_scene_map(conv_logits(), data)).any()


def test_scene_smaller_than_a_window(tmp_path):
    data = random_scene(37, 53, seed=1)
    scene = write_scene(tmp_path / "small.tif", data)
    seen = []

    def fn(images):
        seen.append(tuple(images.shape))
        return conv_logits()(images)

    map_scene(scene, tmp_path / "small_map.tif", fn, CLASSES, SceneOptions(window=64))
    assert seen == [(1, 3, 64, 64)]  # padded to the full window: the scale the model expects
    with rasterio.open(tmp_path / "small_map.tif") as src:
        assert (src.width, src.height) == (53, 37)
        inner = src.read(1)[2:-2, 2:-2]
    np.testing.assert_array_equal(inner, whole_scene_map(conv_logits(), data)[2:-2, 2:-2])


def test_nodata_block_stays_nodata_and_costs_no_forward_pass(tmp_path):
    data = random_scene(256, 320, seed=2)
    data[:, 0:128, 0:160] = 0  # covers every window of the top-left corner
    scene = write_scene(tmp_path / "holes.tif", data, nodata=0)
    fn = counting(conv_logits())
    result = map_scene(scene, tmp_path / "holes_map.tif", fn, CLASSES, SceneOptions(window=64, overlap=0.25))
    assert result.windows_skipped > 0 and fn.windows == result.windows - result.windows_skipped
    with rasterio.open(tmp_path / "holes_map.tif") as src:
        written = src.read(1)
    assert (written[0:128, 0:160] == 255).all()
    assert (written[128:, :] != 255).all() and (written[:, 160:] != 255).all()
    assert result.nodata_pixels == 128 * 160
    table = area_table(tmp_path / "holes_map.tif", CLASSES)
    assert table["nodata_pixels"] == 128 * 160
    assert table["mapped_pixels"] == 256 * 320 - 128 * 160 == sum(r["pixels"] for r in table["classes"])
    assert table["pixel_area_m2"] == pytest.approx(0.25)
    assert sum(r["hectares"] for r in table["classes"]) == pytest.approx(table["mapped_pixels"] * 0.25 / 1e4)
    assert sum(r["share"] for r in table["classes"]) == pytest.approx(1.0)


def test_geographic_crs_gives_pixels_but_no_hectares(tmp_path):
    scene = write_scene(
        tmp_path / "geo.tif",
        random_scene(40, 40),
        crs=CRS.from_epsg(4326),
        transform=from_origin(116.0, 40.0, 1e-5, 1e-5),
    )
    map_scene(scene, tmp_path / "geo_map.tif", conv_logits(), CLASSES, SceneOptions(window=32))
    table = area_table(tmp_path / "geo_map.tif", CLASSES)
    assert table["mapped_pixels"] == 1600 and table["pixel_area_m2"] is None
    assert all(r["hectares"] is None for r in table["classes"]) and "geographic" in table["note"]


def test_four_band_scene_uses_the_bands_asked_for(tmp_path):
    data = random_scene(96, 80, bands=4, seed=4)
    scene = write_scene(tmp_path / "nir.tif", data)
    map_scene(scene, tmp_path / "m.tif", conv_logits(), CLASSES, SceneOptions(window=48, bands=[4, 2, 1]))
    with rasterio.open(tmp_path / "m.tif") as src:
        np.testing.assert_array_equal(src.read(1), whole_scene_map(conv_logits(), data[[3, 1, 0]]))
    with pytest.raises(SceneError, match=r"nir\.tif' has 4 band\(s\).*\[5\]"):
        check_scenes([scene], SceneOptions(window=48, bands=[5, 2, 1]))


def test_uint16_is_refused_without_scaling_and_mapped_with_it(tmp_path):
    data = random_scene(64, 64, seed=5, dtype=np.uint16, high=4000)
    scene = write_scene(tmp_path / "u16.tif", data)
    with pytest.raises(SceneError, match=r"u16\.tif' has uint16 pixels.*scaling"):
        map_scene(scene, tmp_path / "m.tif", conv_logits(), CLASSES, SceneOptions(window=32))
    assert not (tmp_path / "m.tif").exists()
    seen = []

    def fn(images):
        seen.append(images)
        return conv_logits()(images)

    opts = SceneOptions(window=64, scaling={"method": "percentile", "low": 2, "high": 98})
    map_scene(scene, tmp_path / "m.tif", fn, CLASSES, opts)
    stretched = seen[0][0].numpy()
    assert stretched.dtype == np.uint8 and stretched.min() == 0 and stretched.max() == 255
    # monotone per band: the brightest input pixel is among the brightest output pixels
    b0 = data[0]
    assert stretched[0][np.unravel_index(b0.argmax(), b0.shape)] == 255


def test_bad_files_are_named_before_any_mapping(tmp_path):
    good = write_scene(tmp_path / "good.tif", random_scene(32, 32))
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00" + b"\x07" * 200)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.tif", format="PNG")
    with pytest.raises(SceneError) as err:
        check_scenes([good, tmp_path / "corrupt.tif", tmp_path / "photo.tif"], SceneOptions(window=32))
    message = str(err.value)
    assert "2 scene(s) cannot be mapped" in message
    assert "corrupt.tif" in message and "photo.tif" in message and "good.tif" not in message


def test_scene_files_and_labels_are_told_apart(tmp_path):
    files = [tmp_path / n for n in ("a.tif", "a_label.tif", "b.TIFF", "README.md", "sources.csv")]
    scenes, others = split_scene_files(files)
    assert [p.name for p in scenes] == ["a.tif", "b.TIFF"]
    assert [p.name for p in others] == ["README.md", "sources.csv"]


def test_naic_values_score_and_quicklook(tmp_path):
    data = random_scene(200, 180, seed=6)
    scene = write_scene(tmp_path / "lab.tif", data, nodata=0)
    truth_idx = whole_scene_map(conv_logits(), data)
    label = CLASSES.to_value(truth_idx)
    label[:20] = 0  # unlabelled rows are ignored
    label[20:40] = CLASSES.to_value((truth_idx[20:40] + 1) % 8)  # wrong on purpose
    write_scene(tmp_path / "lab_label.tif", label[None])
    opts = SceneOptions(window=64, output_values="naic")
    map_scene(scene, tmp_path / "lab_map.tif", conv_logits(), CLASSES, opts)
    with rasterio.open(tmp_path / "lab_map.tif") as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 0
        assert set(np.unique(src.read(1))) <= set(CLASSES.values)
        assert src.colormap(1)[300][:3] == (214, 39, 40)
    result = score_map(tmp_path / "lab_map.tif", tmp_path / "lab_label.tif", CLASSES, "naic")
    assert result["pixels"] == 180 * 180
    assert result["pixel_accuracy"] == pytest.approx(160 / 180)
    quicklook(scene, tmp_path / "lab_map.tif", tmp_path / "q" / "lab.png", CLASSES, opts)
    png = Image.open(tmp_path / "q" / "lab.png")
    assert png.width > 600 and png.format == "PNG"


def test_rows_of_nodata_only_windows_between_batches(tmp_path):
    """Whole rows of windows are skipped while a batch is pending: they are still written as nodata and
    the windows around them blend as usual."""
    data = random_scene(300, 200, seed=8)
    data[:, 80:230] = 0
    scene = write_scene(tmp_path / "band.tif", data, nodata=0)
    fn = counting(conv_logits())
    opts = SceneOptions(window=32, batch_size=5, nodata_fill="none")  # windows see the zeros, as the pass
    result = map_scene(scene, tmp_path / "band_map.tif", fn, CLASSES, opts)
    assert result.windows_skipped >= 5 * 8 and fn.windows == result.windows - result.windows_skipped
    with rasterio.open(tmp_path / "band_map.tif") as src:
        written = src.read(1)
    expected = whole_scene_map(conv_logits(), data)
    expected[80:230] = 255
    np.testing.assert_array_equal(written, expected)


@pytest.mark.parametrize("fill", ["mirror", "mean", "none"])
def test_what_the_model_sees_in_the_nodata_part_of_a_window(tmp_path, fill):
    """A tile among nodata (the shared rs8test scenes): black, which no training tile had, is mirrored
    valid imagery (or the normalisation's mean colour) by the time a window reaches the model; the map
    stays nodata there whatever the model saw."""
    data = np.zeros((3, 192, 192), dtype=np.uint8)
    data[:, 40:140, 50:150] = random_scene(100, 100, seed=4)
    scene = write_scene(tmp_path / "tile.tif", data, nodata=0)
    seen = []

    def fn(images):
        seen.append(images.clone())
        return conv_logits()(images)

    opts = SceneOptions(window=64, nodata_fill=fill, fill_colour=(10, 20, 30))
    map_scene(scene, tmp_path / "tile_map.tif", fn, CLASSES, opts)
    crops = torch.cat(seen)
    if fill == "mirror":  # the valid part of every window is a rectangle: mirrored, nothing painted
        assert crops.amin() >= 1 and not (crops == torch.tensor([10, 20, 30])[:, None, None]).all(1).any()
    elif fill == "mean":
        painted = (crops == torch.tensor([10, 20, 30], dtype=torch.uint8)[:, None, None]).all(1)
        assert (crops.amin(1) == 0).sum() == 0 and painted.any()
    else:
        assert (crops == 0).all(1).any()
    with rasterio.open(tmp_path / "tile_map.tif") as src:
        written = src.read(1)
    outside = np.ones((192, 192), dtype=bool)
    outside[40:140, 50:150] = False
    assert (written[outside] == 255).all() and (written[~outside] != 255).all()


def test_mirror_fill_paints_the_mean_colour_where_the_valid_part_is_not_a_rectangle(tmp_path):
    data = random_scene(64, 64, seed=5)
    data[:, :32, :32] = 0  # an L-shaped valid part
    scene = write_scene(tmp_path / "l.tif", data, nodata=0)
    seen = []

    def fn(images):
        seen.append(images.clone())
        return conv_logits()(images)

    opts = SceneOptions(window=64, fill_colour=(10, 20, 30))
    map_scene(scene, tmp_path / "l_map.tif", fn, CLASSES, opts)
    (crop,) = torch.cat(seen)
    assert (crop[:, :32, :32] == torch.tensor([10, 20, 30], dtype=torch.uint8)[:, None, None]).all()
    assert torch.equal(crop[:, 32:], torch.from_numpy(data[:, 32:]))


def test_a_read_error_while_mapping_names_the_file_and_rows_and_writes_no_map(tmp_path, monkeypatch):
    """Strips are read one ahead in a thread: an error there still reaches the caller, naming the scene
    and the rows, and no map (nor temporary) is left."""
    from rasterio.errors import RasterioError

    import naic_seg.core.scenes.io as scene_io

    scene = write_scene(tmp_path / "bad.tif", random_scene(200, 120, seed=6))
    real, calls = scene_io.to_uint8, []

    def failing(block, limits):
        calls.append(1)
        if len(calls) == 2:
            raise RasterioError("simulated decode failure")
        return real(block, limits)

    monkeypatch.setattr(scene_io, "to_uint8", failing)
    out = tmp_path / "maps" / "bad.tif"
    out.parent.mkdir()
    with pytest.raises(SceneError, match=r"bad\.tif': cannot read rows 48\.\.112: simulated"):
        map_scene(scene, out, conv_logits(), CLASSES, SceneOptions(window=64))
    assert list(out.parent.iterdir()) == []


def scaled_logits(scale=2500.0, seed=0):
    """``conv_logits`` scaled down so that the softmax is not saturated (probabilities well inside (0, 1))."""
    conv = conv_logits(seed=seed)
    return lambda images: conv(images) / scale


def single_window_pixels(length, window, stride):
    """Positions along an axis weighed by one window only (every other window's weight 0 there)."""
    axis = WindowAxis.of(length, window, stride)
    covering = np.zeros(length, dtype=int)
    for start, profile in zip(axis.starts, axis.profiles, strict=True):
        covering[start : start + axis.span] += profile > 0
    return covering == 1


def test_confidence_is_the_softmax_of_the_blended_logits_and_nodata_where_the_map_is(tmp_path):
    h, w, window = 190, 230, 64
    data = random_scene(h, w, seed=9)
    data[:, :50, :70] = 0  # a nodata corner
    scene = write_scene(tmp_path / "c.tif", data, nodata=0)
    opts = SceneOptions(window=window, overlap=0.25, batch_size=3, nodata_fill="none")
    result = map_scene(scene, tmp_path / "c_map.tif", scaled_logits(), CLASSES, opts, tmp_path / "c_conf.tif")
    map_scene(scene, tmp_path / "plain.tif", scaled_logits(), CLASSES, opts)
    with rasterio.open(tmp_path / "c_map.tif") as m, rasterio.open(tmp_path / "c_conf.tif") as c:
        classes, confidence = m.read(1), c.read(1)
        assert c.dtypes[0] == "uint8" and c.nodata == 0 and (c.crs, c.transform) == (m.crs, m.transform)
        assert c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(tmp_path / "plain.tif") as plain:  # the same map with the confidence on or off
        np.testing.assert_array_equal(plain.read(1), classes)
    assert result.nodata_pixels == 50 * 70
    np.testing.assert_array_equal(confidence == 0, classes == 255)
    assert confidence[classes != 255].min() >= round(255 / 8) and confidence.max() <= 255

    probs = torch.softmax(scaled_logits()(torch.from_numpy(data[None].copy()))[0], 0).amax(0).numpy()
    expected = np.rint(probs * 255).astype(np.uint8)
    stride = opts.stride
    single = single_window_pixels(h, window, stride)[:, None] & single_window_pixels(w, window, stride)[None]
    single &= classes != 255
    single[:60, :80] = False  # the windows that saw the nodata corner (zeros, as the whole-scene pass did)
    assert single.sum() > 0.3 * h * w
    diff = np.abs(confidence[single].astype(int) - expected[single])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 sums round a rare .5 the other way
    assert 40 < expected[single].mean() < 250  # not saturated: the comparison means something


def numpy_logits(num_classes=8, seed=0):
    """A per-pixel linear model computed in NumPy (whose arrays tracemalloc sees, unlike torch's)."""
    weight = np.random.default_rng(seed).integers(-3, 4, size=(num_classes, 3)).astype(np.float32)

    def fn(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.einsum("cb,nbhw->nchw", weight, images.numpy().astype(np.float32)))

    return fn


def _mapping_peak(tmp_path, height: int, width: int) -> int:
    """Peak bytes traced while one scene is mapped (reading, blending, writing the strips and the COG)."""
    import gc
    import tracemalloc

    scene = write_scene(tmp_path / f"h{height}.tif", random_scene(height, width, seed=height))
    fn, options = numpy_logits(), SceneOptions(window=64, batch_size=8)
    gc.collect()
    tracemalloc.start()
    try:
        map_scene(scene, tmp_path / f"h{height}_map.tif", fn, CLASSES, options)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_mapping_memory_does_not_grow_with_the_scene_height(tmp_path):
    """README: "Memory does not grow with a scene's height". Peak traced memory (Python and NumPy
    allocations: the strips read, the windows, the blend buffers and carried rows, the band written) of
    mapping a 256 x 256 scene vs a 4096 x 256 one (window 64) differs by less than 0.5 MB: half of what the
    taller map alone takes as bytes (1 MB; its image 3 MB, its logits 34 MB), so a mapper that kept any of
    them whole fails. Measured on the 2-core EPYC: 2.19 / 2.05 MB vs 2.20 / 2.19 MB (+0.01..0.15 MB).
    GDAL's own buffers are outside tracemalloc: benchmarks/bench_scenes.py measures the peak RSS."""
    _mapping_peak(tmp_path, 256, 256)  # first imports and caches
    short, tall = _mapping_peak(tmp_path, 256, 256), _mapping_peak(tmp_path, 4096, 256)
    assert tall - short < 0.5e6, (short, tall)
