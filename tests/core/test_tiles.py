"""data_prep's library: pairing, the seeded hold-out, every bad-input rule, and the report."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from naic_seg.core.holdout import Fold, GroupTable, split_holdout
from naic_seg.core.tiles import (
    PROBLEM_LIST_LIMIT,
    TileListing,
    TileValidationError,
    id_sort_key,
    prepare,
)
from tests.conftest import CLASS_VALUES, make_tree, write_tile

NAMES = [f"c{v}" for v in CLASS_VALUES]


def listing(folder: Path) -> TileListing:
    files = sorted(str(p) for p in folder.iterdir()) if folder.is_dir() else []
    return TileListing(str(folder), tuple(files))


def run_prepare(root: Path, **kwargs):
    kwargs.setdefault("holdout", 2)
    kwargs.setdefault("workers", 0)
    return prepare(
        listing(root / "train" / "images"),
        listing(root / "train" / "labels"),
        listing(root / "test" / "images"),
        label_values=CLASS_VALUES,
        class_names=NAMES,
        **kwargs,
    )


def expect_problem(root: Path, path: Path, fragment: str, **kwargs) -> TileValidationError:
    with pytest.raises(TileValidationError) as info:
        run_prepare(root, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    assert fragment in message, message
    return info.value


def test_manifests_pair_by_id_sort_numerically_and_cover_every_tile(tile_tree: Path):
    result = run_prepare(tile_tree)
    entries = result.train_manifest + result.val_manifest
    assert len(entries) == 12 and len(result.test_manifest) == 4
    for entry in entries:
        assert Path(entry["filename"]).stem == Path(entry["ann"]["seg_map"]).stem
        assert Path(entry["filename"]).exists() and Path(entry["ann"]["seg_map"]).exists()
    for manifest in (result.train_manifest, result.val_manifest, result.test_manifest):
        ids = [Path(e["filename"]).stem for e in manifest]
        assert ids == sorted(ids, key=id_sort_key)
    assert all("ann" not in e for e in result.test_manifest)
    assert id_sort_key("98148") < id_sort_key("101035")


def test_holdout_is_seeded_disjoint_and_sized():
    a, b = split_holdout(100, 0.05, seed=1996), split_holdout(100, 0.05, seed=1996)
    assert (a == b).all() and a.sum() == 5
    assert not (split_holdout(100, 0.05, seed=1) == a).all()
    assert split_holdout(100, 17, seed=0).sum() == 17
    with pytest.raises(ValueError, match="leaves no training"):
        split_holdout(10, 10, seed=0)


def test_holdout_manifests_are_disjoint_and_deterministic(tile_tree: Path):
    first, second = run_prepare(tile_tree, holdout=0.25), run_prepare(tile_tree, holdout=0.25)
    assert first.val_manifest == second.val_manifest and len(first.val_manifest) == 3
    train = {e["filename"] for e in first.train_manifest}
    assert train.isdisjoint(e["filename"] for e in first.val_manifest)


def test_report_counts_classes_and_frequencies(tile_tree: Path):
    report = run_prepare(tile_tree, holdout=2).report
    assert report["counts"] == {"train": 10, "val": 2, "test": 4}
    assert report["image_sizes"]["train"] == {"32x32": 12}
    train = report["train_pixels"]
    assert train["pixels"] == 10 * 32 * 32 and train["ignored_pixels"] == 10
    assert sum(c["pixels"] for c in train["classes"]) == 10 * (32 * 32 - 1)
    assert sum(c["frequency"] for c in train["classes"]) == pytest.approx(1.0)


def test_image_without_label_and_label_without_image(tile_tree: Path):
    image_only, _ = write_tile(tile_tree, "train", 424242, with_label=False)
    orphan = tile_tree / "train" / "labels" / "777.png"
    Image.fromarray(np.full((32, 32), 100, np.uint16)).save(orphan)
    error = expect_problem(tile_tree, image_only, "image without label")
    assert f"{orphan}: label without image" in str(error)


def test_truncated_tiff_is_named(tile_tree: Path):
    path = tile_tree / "train" / "images" / "1000.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_problem(tile_tree, path, "truncated")


def test_unreadable_image_is_named(tile_tree: Path):
    path = tile_tree / "train" / "images" / "1007.tif"
    path.write_bytes(b"not a tiff at all")
    expect_problem(tile_tree, path, "unreadable")


def test_label_value_outside_the_valid_set(tile_tree: Path):
    label = np.full((32, 32), 300, np.uint16)
    label[3, 3] = 900
    _, lab = write_tile(tile_tree, "train", 1000, label=label)
    expect_problem(tile_tree, lab, "outside the valid set: 900 (1 pixels)")


def test_valid_value_set_is_a_parameter(tile_tree: Path):
    label = np.full((32, 32), 300, np.uint16)
    label[0, 0] = 65535
    _, lab = write_tile(tile_tree, "train", 1000, label=label)
    expect_problem(tile_tree, lab, "65535")
    assert run_prepare(tile_tree, ignore_values=(0, 65535)).report["train_pixels"]["ignored_pixels"] > 0


def test_eight_bit_label_is_refused(tile_tree: Path):
    _, lab = write_tile(tile_tree, "train", 1000, label=Image.fromarray(np.full((32, 32), 100, np.uint8)))
    expect_problem(tile_tree, lab, "not 16-bit grayscale")


def test_multichannel_label_is_refused(tile_tree: Path):
    _, lab = write_tile(tile_tree, "train", 1000, label=Image.fromarray(np.zeros((32, 32, 3), np.uint8)))
    expect_problem(tile_tree, lab, "not single-channel")


def test_label_size_must_match_its_image(tile_tree: Path):
    _, lab = write_tile(tile_tree, "train", 1000, label=np.full((16, 32), 100, np.uint16))
    expect_problem(tile_tree, lab, "label size 32x16 differs from its image's 32x32")


def test_sixteen_bit_image_is_refused(tile_tree: Path):
    img = tile_tree / "train" / "images" / "1000.tif"
    Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(img)
    expect_problem(tile_tree, img, "not 3-channel 8-bit RGB")


def test_rgba_and_grey_images_are_converted_with_a_warning(tile_tree: Path, caplog):
    write_tile(tile_tree, "train", 1000, image=np.zeros((32, 32, 4), np.uint8))
    write_tile(tile_tree, "train", 1007, image=np.zeros((32, 32), np.uint8))
    with caplog.at_level(logging.WARNING):
        report = run_prepare(tile_tree).report
    assert report["converted_images"] == 2
    assert "RGBA image converted to RGB" in caplog.text and "1000.tif" in caplog.text


def test_non_image_files_are_skipped_with_one_warning(tile_tree: Path, caplog):
    for name in ("Thumbs.db", ".DS_Store", "1000.tif.aux.xml"):
        (tile_tree / "train" / "images" / name).write_bytes(b"junk")
    with caplog.at_level(logging.WARNING):
        report = run_prepare(tile_tree).report
    assert report["skipped_non_image_files"] == 3
    assert len([r for r in caplog.records if "non-image" in r.getMessage()]) == 1


def test_empty_folder_is_an_error(tmp_path: Path):
    root = make_tree(tmp_path / "t", n_train=3, n_test=0)
    (root / "test" / "images").mkdir(parents=True)
    expect_problem(root, root / "test" / "images", "no test images found")


def test_every_problem_is_listed_up_to_a_limit_then_counted(tmp_path: Path):
    root = make_tree(tmp_path / "t", n_train=PROBLEM_LIST_LIMIT + 5, n_test=1, size=8)
    for path in (root / "train" / "labels").iterdir():
        os.remove(path)
    (root / "train" / "labels" / "keep.png").write_bytes(b"")
    with pytest.raises(TileValidationError) as info:
        run_prepare(root)
    assert len(info.value.problems) == PROBLEM_LIST_LIMIT + 6
    assert "... and 6 more" in str(info.value)


def test_parallel_inspection_matches_serial(tmp_path: Path):
    root = make_tree(tmp_path / "t", n_train=300, n_test=20, size=8)
    serial, parallel = run_prepare(root, workers=0), run_prepare(root, workers=2)
    assert serial.report == parallel.report and serial.val_manifest == parallel.val_manifest


def write_sources(root: Path, skip: set[str] = frozenset()) -> GroupTable:
    """rs8-style sources: tile i of the 12 comes from scene i // 3 (offsets after '@')."""
    ids = sorted((p.stem for p in (root / "train" / "images").iterdir()), key=id_sort_key)
    rows = [f'{tid},"scene{i // 3}.jpg@{i % 3},0"' for i, tid in enumerate(ids) if tid not in skip]
    (root / "sources.csv").write_text("id,source\n" + "\n".join(rows) + "\n")
    return GroupTable(str(root / "sources.csv"), "source", pattern="^([^@]+)")


def test_grouped_holdout_keeps_scenes_apart_and_is_reported(tile_tree: Path):
    result = run_prepare(tile_tree, holdout=3, groups=write_sources(tile_tree), seed=5)
    holdout = result.report["holdout"]
    assert holdout["kind"] == "grouped" and holdout["groups"] == {"train": 3, "val": 1}
    assert len(result.val_manifest) == 3 == result.report["counts"]["val"]
    ids = sorted((p.stem for p in (tile_tree / "train" / "images").iterdir()), key=id_sort_key)
    scene = {tid: f"scene{i // 3}.jpg" for i, tid in enumerate(ids)}
    val = {scene[Path(e["filename"]).stem] for e in result.val_manifest}
    assert val == set(holdout["held_out"]) and len(val) == 1
    assert val.isdisjoint(scene[Path(e["filename"]).stem] for e in result.train_manifest)
    assert holdout["classes_without_val_pixels"] == []
    assert run_prepare(tile_tree, holdout=0.25).report["holdout"]["kind"] == "random"


def test_fold_of_groups_is_the_holdout(tile_tree: Path):
    table = write_sources(tile_tree)
    vals = [run_prepare(tile_tree, groups=table, fold=Fold(4, i)).val_manifest for i in range(4)]
    files = [e["filename"] for v in vals for e in v]
    assert sorted(files) == sorted(str(p) for p in (tile_tree / "train" / "images").iterdir())
    assert all(len(v) == 3 for v in vals)
    report = run_prepare(tile_tree, groups=table, fold=Fold(4, 1)).report
    assert report["holdout"]["fold"] == {"k": 4, "index": 1}


def test_tiles_the_group_table_does_not_name_are_listed_before_inspection(tile_tree: Path, monkeypatch):
    table = write_sources(tile_tree, skip={"1000", "1014"})
    monkeypatch.setattr("naic_seg.core.tiles.inspect_pairs", lambda *a: pytest.fail("inspected"))
    image = tile_tree / "train" / "images" / "1000.tif"
    error = expect_problem(tile_tree, image, "not in the hold-out group", groups=table)
    assert len(error.problems) == 2 and "1014.tif" in str(error)
    table = GroupTable(str(tile_tree / "sources.csv"), "scene")
    expect_problem(tile_tree, tile_tree / "sources.csv", "no column ['scene']", groups=table)
