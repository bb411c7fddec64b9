"""Training-time augmentation: photometric changes and rescale-crop, seeded per sample, labels untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from naic_seg.core.augment import check_augment, photometric, rescale_crop
from naic_seg.core.data import ManifestDataset
from naic_seg.core.labels import ClassTable
from naic_seg.core.synthetic import write_synthetic_tiles
from tests.conftest import write_tile

PHOTOMETRIC = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "gamma": [0.8, 1.25]}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> list[dict]:
    root = write_synthetic_tiles(tmp_path_factory.mktemp("aug") / "t", n_train=4, n_test=0, size=64, seed=1)
    ids = sorted(p.stem for p in (root / "train" / "images").iterdir())
    return [
        {
            "filename": str(root / f"train/images/{t}.tif"),
            "ann": {"seg_map": str(root / f"train/labels/{t}.png")},
        }
        for t in ids
    ]


def dataset(manifest, augment=None, seed=7, size=64) -> ManifestDataset:
    return ManifestDataset(manifest, ClassTable.naic(), size, augment=augment, seed=seed)


def test_photometric_is_deterministic_per_sample_seed_and_leaves_the_label(manifest):
    plain, jittered = dataset(manifest), dataset(manifest, {"photometric": PHOTOMETRIC})
    again, other_seed = (
        dataset(manifest, {"photometric": PHOTOMETRIC}),
        dataset(manifest, {"photometric": PHOTOMETRIC}, 8),
    )
    a, b = jittered[(0, 5)], again[(0, 5)]
    assert torch.equal(a["image"], b["image"]) and a["image"].dtype == torch.uint8
    assert not torch.equal(a["image"], plain[(0, 5)]["image"])
    assert not torch.equal(a["image"], jittered[(0, 6)]["image"])  # another position, other draws
    assert not torch.equal(a["image"], other_seed[(0, 5)]["image"])
    for position in range(4):
        assert torch.equal(jittered[(1, position)]["label"], plain[(1, position)]["label"])


def test_each_photometric_change_moves_the_image_its_own_way():
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, size=(32, 32, 3), dtype=np.uint8)
    assert np.array_equal(photometric(image, rng, {}), image)
    grey = photometric(image, np.random.default_rng(1), {"saturation": 1.0})  # factor in [0, 2]
    brighter = photometric(image, np.random.default_rng(2), {"brightness": 0.5})
    ratio = brighter.astype(float).sum() / image.astype(float).sum()
    assert 0.5 <= ratio <= 1.5 and abs(ratio - 1) > 0.01
    spread = lambda x: x.astype(float).std(axis=2).mean()  # noqa: E731 (colour spread across channels)
    assert abs(spread(grey) - spread(image)) > 0.5
    gamma = photometric(image, np.random.default_rng(3), {"gamma": [2.0, 2.0]})
    assert np.abs(gamma.astype(float) - 255 * (image / 255) ** 2).max() <= 0.5
    hue = photometric(image, np.random.default_rng(4), {"hue": 0.5})
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs((hue - image.astype(float)) @ luma).mean() < 1.5 < np.abs(hue - image.astype(float)).mean()


def test_rescale_crop_keeps_the_input_size_and_pads_with_ignored_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    label = rng.integers(0, 8, size=(64, 64), dtype=np.uint8)
    small_image, small_label = rescale_crop(image, label, np.random.default_rng(1), (0.5, 0.5), 64)
    assert small_image.shape == (64, 64, 3) and small_label.shape == (64, 64)
    assert (small_label == 255).sum() == 64 * 64 - 32 * 32 and (small_image[small_label == 255] == 0).all()
    big_image, big_label = rescale_crop(image, label, np.random.default_rng(1), (2.0, 2.0), 48)
    assert big_image.shape == (48, 48, 3) and (big_label != 255).all()
    again = rescale_crop(image, label, np.random.default_rng(1), (2.0, 2.0), 48)
    assert np.array_equal(again[0], big_image) and np.array_equal(again[1], big_label)


def test_scale_in_the_dataset_gives_input_sized_pairs_that_agree(manifest):
    ds = dataset(manifest, {"scale": [0.5, 0.5]}, size=48)
    for position in range(4):
        sample = ds[(position, position)]
        assert sample["image"].shape == (3, 48, 48) and sample["label"].shape == (48, 48)
        padded = (sample["image"] == 0).all(dim=0)  # the synthetic tiles' noise is never black on all bands
        assert padded.sum() == 48 * 48 - 24 * 24 and (sample["label"][padded] == 255).all()


def test_augment_options_are_checked():
    check_augment({"hflip": True, "photometric": PHOTOMETRIC, "scale": [0.75, 1.5]})
    with pytest.raises(ValueError, match=r"unknown augment option\(s\) \['rotate'\]"):
        check_augment({"rotate": 90})
    with pytest.raises(ValueError, match=r"unknown augment.photometric option\(s\) \['sharpness'\]"):
        check_augment({"photometric": {"sharpness": 0.1}})
    with pytest.raises(ValueError, match="photometric.brightness must be in"):
        check_augment({"photometric": {"brightness": 1.5}})
    with pytest.raises(ValueError, match=r"augment.scale must be \[low, high\]"):
        check_augment({"scale": [1.5, 0.75]})


def _rs8_augment() -> dict:
    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "rs8" / "parameters_train.yml"
    return yaml.safe_load(conf.read_text())["train_stage1"]["train"]["augment"]


TABLE_VALUES = np.asarray(ClassTable.naic().values, dtype=np.uint16)


def _coded_tile(root: Path, side: int = 64, block: int = 8) -> dict:
    """A tile whose red band encodes its label (class index i -> 32 i + 5) in blocks of ``block`` px of random
    classes, and whose green / blue bands are the pixel's row / column, so a flip shows in them."""
    rng = np.random.default_rng(3)
    index = np.kron(rng.integers(0, 8, size=(side // block, side // block)), np.ones((block, block), int))
    rows, cols = np.mgrid[0:side, 0:side] * (256 // side)
    image = np.stack([32 * index + 5, rows, cols], axis=-1).astype(np.uint8)
    image_path, label_path = write_tile(root, "train", 1, image=image, label=TABLE_VALUES[index])
    return {"filename": str(image_path), "ann": {"seg_map": str(label_path)}}


@pytest.mark.parametrize(
    ("augment", "flips"),
    [
        ({"hflip": True}, {(False, False), (True, False)}),
        ({"vflip": True}, {(False, False), (False, True)}),
        ({"hflip": True, "vflip": True}, {(False, False), (True, False), (False, True), (True, True)}),
        ("conf/rs8", {(False, False), (True, False), (False, True), (True, True)}),
    ],
)
@pytest.mark.parametrize("size", [64, 32])
def test_flips_keep_image_and_label_aligned(tmp_path, augment, flips, size):
    """Every flip the training stream draws moves image and label together, at the tile's size and resized
    to a smaller input (as conf/rs8 trains: flips, then 256 -> 192 px); each combination is drawn."""
    augment = _rs8_augment() if augment == "conf/rs8" else augment
    assert augment.get("hflip") or augment.get("vflip")
    entry = _coded_tile(tmp_path)
    ds = ManifestDataset([entry], ClassTable.naic(), size, augment=augment, seed=11)
    seen = set()
    for position in range(48):
        sample = ds[(0, position)]
        image, label = sample["image"].numpy().astype(int), sample["label"].numpy()
        # Which flips were drawn: the rows / columns the green / blue bands carry run backwards.
        y, x = np.mgrid[0:size, 0:size]
        drawn = (
            np.corrcoef(image[2].ravel(), x.ravel())[0, 1] < 0,
            np.corrcoef(image[1].ravel(), y.ravel())[0, 1] < 0,
        )
        seen.add(drawn)
        decoded = (image[0] - 5 + 16) // 32  # the label the red band encodes
        if size == 64:
            assert np.array_equal(decoded, label), (position, drawn)
        else:  # bilinear image vs nearest label: compare where the label is the same all around
            padded = np.pad(label, 1, mode="edge")
            inner = np.all(
                [
                    padded[1 + dy : 1 + dy + size, 1 + dx : 1 + dx + size] == label
                    for dy in (-1, 0, 1)
                    for dx in (-1, 0, 1)
                ],
                axis=0,
            )
            assert inner.mean() > 0.4
            assert np.array_equal(decoded[inner], label[inner]), (position, drawn)
    assert seen == flips
