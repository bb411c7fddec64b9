"""The grouped hold-out and K folds of groups: whole groups on one side, seeded, sized, classes covered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from naic_seg.core.holdout import Fold, GroupTable, group_folds, grouped_holdout, split_holdout

N_CLASSES = 4


def grouped_tiles(seed: int = 0, n_groups: int = 60) -> tuple[list[str], np.ndarray]:
    """Tiles of groups of 1 to 8 tiles; class 3 is rare: only the tiles of three groups have it."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, size=n_groups)
    groups = [f"scene{g:02d}" for g, size in enumerate(sizes) for _ in range(size)]
    pixels = rng.integers(0, 1000, size=(len(groups), N_CLASSES))
    rare = {"scene07", "scene31", "scene52"}
    pixels[:, 3] = [int(rng.integers(1, 50)) if g in rare else 0 for g in groups]
    order = rng.permutation(len(groups))  # tiles of one group are not contiguous
    return [groups[i] for i in order], pixels[order]


def held_groups(groups: list[str], mask: np.ndarray) -> set[str]:
    return {g for g, v in zip(groups, mask, strict=True) if v}


def test_no_group_is_on_both_sides():
    groups, pixels = grouped_tiles()
    for seed in range(5):
        mask = grouped_holdout(groups, pixels, 0.2, seed)
        val = held_groups(groups, mask)
        train = {g for g, v in zip(groups, mask, strict=True) if not v}
        assert val and train and val.isdisjoint(train)


def test_seeded_and_independent_of_the_tile_order():
    groups, pixels = grouped_tiles()
    a = grouped_holdout(groups, pixels, 0.2, seed=1996)
    assert (a == grouped_holdout(groups, pixels, 0.2, seed=1996)).all()
    assert held_groups(groups, a) != held_groups(groups, grouped_holdout(groups, pixels, 0.2, seed=1))
    order = np.random.default_rng(5).permutation(len(groups))
    shuffled = grouped_holdout([groups[i] for i in order], pixels[order], 0.2, seed=1996)
    assert held_groups([groups[i] for i in order], shuffled) == held_groups(groups, a)


@pytest.mark.parametrize("holdout", [0.1, 0.25, 0.5, 17, 40])
def test_count_or_fraction_is_honoured_within_one_group_size(holdout):
    groups, pixels = grouped_tiles(seed=3)
    largest = max(groups.count(g) for g in set(groups))
    target = round(holdout * len(groups)) if holdout < 1 else holdout
    for seed in range(10):
        held = int(grouped_holdout(groups, pixels, holdout, seed).sum())
        assert abs(held - target) <= largest, (seed, held, target)


def test_every_class_gets_holdout_pixels_where_it_can_and_keeps_training_pixels():
    groups, pixels = grouped_tiles()
    for seed in range(20):
        mask = grouped_holdout(groups, pixels, 0.1, seed)
        assert (pixels[mask].sum(axis=0) > 0).all(), seed  # the rare class too, in 3 of 60 groups
        assert (pixels[~mask].sum(axis=0) > 0).all(), seed
    # A class that only one group has stays on the training side: held out, no model could learn it.
    only = [g == "scene07" for g in groups]
    pixels[:, 3] = np.where(only, 10, 0)
    for seed in range(20):
        mask = grouped_holdout(groups, pixels, 0.3, seed)
        assert pixels[~mask, 3].sum() > 0 and pixels[mask, 3].sum() == 0


def test_a_random_tile_holdout_misses_the_rare_class_that_the_grouped_one_covers():
    groups, pixels = grouped_tiles()
    misses = sum(pixels[split_holdout(len(groups), 0.1, seed), 3].sum() == 0 for seed in range(20))
    assert misses >= 5  # the reason for the cover step: a random tenth often has none of it


def test_groups_too_large_for_the_asked_holdout_are_a_clear_error():
    groups = [f"g{i // 10}" for i in range(30)]
    with pytest.raises(ValueError, match="no validation tile.*3 groups hold 10 to 10 tiles"):
        grouped_holdout(groups, np.ones((30, 2), dtype=np.int64), 2, seed=0)


def test_folds_partition_the_groups_and_each_fold_is_about_a_kth():
    groups, pixels = grouped_tiles(seed=1)
    largest = max(groups.count(g) for g in set(groups))
    k = 5
    folds = group_folds(groups, pixels, k, seed=1996)
    assert (folds == group_folds(groups, pixels, k, seed=1996)).all()
    assert set(folds) == set(range(k))
    fold_of = {}
    for g, f in zip(groups, folds, strict=True):
        assert fold_of.setdefault(g, f) == f, f"group {g} in two folds"
    assert set(fold_of) == set(groups)  # every group in exactly one fold
    for f in range(k):
        assert abs(int((folds == f).sum()) - len(groups) / k) <= largest, f
    covered = [pixels[folds == f, 3].sum() > 0 for f in range(k)]
    assert sum(covered) == 3  # the rare class of 3 groups: in 3 folds, never two of its groups in one
    with pytest.raises(ValueError, match="5 folds need at least 5 groups"):
        group_folds(["a", "b", "a", "c"], np.ones((4, 2), dtype=np.int64), 5, seed=0)


def write_csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_group_table_extracts_the_key_with_the_pattern(tmp_path: Path):
    csv = write_csv(
        tmp_path / "sources.csv",
        'id,source\n1,"deepglobe:6399_sat.jpg@1792,1536"\n2,"deepglobe:6399_sat.jpg@0,256"\n'
        "3,GID-MTL15:gid_mtl/GID-MTL15/image/urban_residential/48.tif\n",
    )
    groups, problems = GroupTable(csv, "source", pattern="^([^@]+)").read()
    assert problems == []
    assert groups == {
        "1": "deepglobe:6399_sat.jpg",
        "2": "deepglobe:6399_sat.jpg",
        "3": "GID-MTL15:gid_mtl/GID-MTL15/image/urban_residential/48.tif",
    }
    assert GroupTable(csv, "source").read()[0]["1"] == "deepglobe:6399_sat.jpg@1792,1536"


@pytest.mark.parametrize(
    ("table", "where", "what"),
    [
        ({"pattern": "^([^@]+"}, "data_prep.holdout_groups.pattern", "not a valid regular expression"),
        ({"pattern": "^[^@]+"}, "data_prep.holdout_groups.pattern", "has no capture group"),
        ({"pattern": "@(\\d+)"}, "sources.csv line 3", "finds no key in source 'b'"),
        ({"group_column": "scene"}, "sources.csv", "no column ['scene'] (columns: ['id', 'source'])"),
        ({"id_column": "tile"}, "sources.csv", "no column ['tile']"),
        ({"csv": "missing.csv"}, "missing.csv", "hold-out group table not found"),
    ],
)
def test_a_bad_table_is_named(tmp_path: Path, table, where, what):
    csv = write_csv(tmp_path / "sources.csv", "id,source\n1,a@1\n2,b\n")
    params = {"csv": csv, "group_column": "source", **table}
    if params["csv"] == "missing.csv":
        params["csv"] = str(tmp_path / "missing.csv")
    _, problems = GroupTable.from_params(params, "data_prep.holdout_groups").read()
    assert len(problems) == 1
    assert where in problems[0][0] and what in problems[0][1], problems


def test_a_tile_in_two_groups_is_named(tmp_path: Path):
    csv = write_csv(tmp_path / "s.csv", "id,source\n1,a\n1,b\n")
    _, problems = GroupTable(csv, "source").read()
    assert problems == [(f"{csv} line 3", "id 1 appears twice, in groups 'a' and 'b'")]


def test_parameters_refuse_unknown_keys_and_bad_folds():
    where = "data_prep.holdout_groups"
    with pytest.raises(ValueError, match=f"key 'colum' in {where}; did you mean 'id_column'\\? valid"):
        GroupTable.from_params({"csv": "s.csv", "group_column": "source", "colum": "x"}, where)
    with pytest.raises(ValueError, match=f"unknown key 'sheet' in {where}; valid: csv, group_column, id_"):
        GroupTable.from_params({"csv": "s.csv", "group_column": "source", "sheet": "x"}, where)
    with pytest.raises(ValueError, match=f"{where} is missing key\\(s\\) 'group_column'"):
        GroupTable.from_params({"csv": "s.csv"}, where)
    table = GroupTable.from_params({"csv": "s.csv", "group_column": "source"}, where)
    assert table == GroupTable("s.csv", "source", "id", None)  # id_column and pattern may be left out
    assert Fold.from_params({"k": 5, "index": 4}, "data_prep.fold") == Fold(5, 4)
    for bad, what in (
        ({"k": 1, "index": 0}, "k must be at least 2, got 1"),
        ({"k": 5, "index": 5}, r"index must be in \[0, k\) = \[0, 5\), got 5"),
        ({"k": 5}, r"is missing key\(s\) 'index'"),
        ({"k": 5, "index": "2"}, "index must be an integer, got '2'"),
    ):
        with pytest.raises(ValueError, match=f"^data_prep.fold.? ?{what}"):
            Fold.from_params(bad, "data_prep.fold")
