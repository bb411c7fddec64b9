"""data_prep through Kedro: catalog inputs, data_root as a runtime parameter, nothing written on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from naic_seg.core.tiles import TileValidationError
from tests.conftest import PROJECT_ROOT, make_tree, write_tile

MANIFESTS = ("train_manifest", "val_manifest", "test_manifest")


def read_manifest(runner, name: str) -> list:
    return json.loads(runner.path(f"data/05_model_input/{name}.json").read_text())


def test_data_root_points_every_raw_dataset_at_a_folder(kedro_runner, tmp_path: Path):
    root = make_tree(tmp_path / "tiles", n_train=10, n_test=3)
    kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"holdout": 2}})
    train, val, test = (read_manifest(kedro_runner, m) for m in MANIFESTS)
    assert (len(train), len(val), len(test)) == (8, 2, 3)
    assert all(Path(e["filename"]).is_relative_to(root) for e in train + val + test)
    report = json.loads(kedro_runner.path("data/08_reporting/dataset_report.json").read_text())
    assert report["counts"] == {"train": 8, "val": 2, "test": 3}


def test_bad_label_fails_naming_it_and_leaves_previous_outputs(kedro_runner, tmp_path: Path):
    root = make_tree(tmp_path / "tiles", n_train=6, n_test=2)
    kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"holdout": 1}})
    before = {m: kedro_runner.path(f"data/05_model_input/{m}.json").read_bytes() for m in MANIFESTS}

    label = np.full((32, 32), 200, np.uint16)
    label[5, 5] = 900
    _, bad = write_tile(root, "train", 1007, label=label)
    with pytest.raises(TileValidationError, match=str(bad)):
        kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"holdout": 1}})
    after = {m: kedro_runner.path(f"data/05_model_input/{m}.json").read_bytes() for m in MANIFESTS}
    assert after == before


def test_bad_input_on_a_fresh_project_writes_nothing(kedro_runner, tmp_path: Path):
    root = make_tree(tmp_path / "tiles", n_train=4, n_test=1)
    (root / "train" / "labels" / "1007.png").unlink()
    with pytest.raises(TileValidationError, match="image without label"):
        kedro_runner.run("data_prep", params={"data_root": str(root)})
    assert not any(kedro_runner.path("data/05_model_input").glob("*.json"))


def test_demo_environment_generates_its_synthetic_tiles_once(kedro_runner):
    kedro_runner.run("data_prep", env="demo")
    marker = kedro_runner.path("data/01_raw/demo/.synthetic-complete")
    assert marker.exists()
    train, val, test = (read_manifest(kedro_runner, m) for m in MANIFESTS)
    assert len(train) + len(val) == 48 and len(val) == 8 and len(test) == 16
    stamp = marker.stat().st_mtime_ns
    kedro_runner.run("data_prep", env="demo")
    assert marker.stat().st_mtime_ns == stamp


@pytest.mark.realdata
def test_rs8_manifests_cover_every_real_tile(kedro_runner, rs8_root: Path):
    kedro_runner.run("data_prep", params={"data_root": str(rs8_root)})
    train, val, test = (read_manifest(kedro_runner, m) for m in MANIFESTS)
    assert len(train) + len(val) == 729 and len(test) == 165
    assert len(val) == round(0.05 * 729)
    for entry in train + val:
        assert Path(entry["filename"]).is_file() and Path(entry["ann"]["seg_map"]).is_file()
    assert all(Path(e["filename"]).is_file() for e in test)


def test_kedro_cli_registry_and_runtime_data_root(tmp_path: Path, kedro_project: Path):
    """The command line a user types: the registry lists the pipelines, --params data_root works."""
    kedro = [sys.executable, "-m", "kedro"]
    listed = subprocess.run([*kedro, "registry", "list"], cwd=kedro_project, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    for name in ("__default__", "data_prep"):
        assert f"- {name}" in listed.stdout
    root = make_tree(tmp_path / "tiles", n_train=5, n_test=2)
    run = subprocess.run(
        [*kedro, "run", "--pipeline", "data_prep", "--params", f"data_root={root},data_prep.holdout=1"],
        cwd=kedro_project,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    test = json.loads((kedro_project / "data/05_model_input/test_manifest.json").read_text())
    assert len(test) == 2 and PROJECT_ROOT.exists()


def test_grouped_fold_holdout_through_kedro_is_reported_and_a_table_gap_writes_nothing(
    kedro_runner, tmp_path: Path
):
    root = make_tree(tmp_path / "tiles", n_train=12, n_test=2)
    ids = sorted(p.stem for p in (root / "train" / "images").iterdir())
    (root / "groups.csv").write_text("tile,scene\n" + "".join(f"{t},s{i // 4}\n" for i, t in enumerate(ids)))
    table = {"csv": str(root / "groups.csv"), "id_column": "tile", "group_column": "scene"}
    options = {"holdout_groups": table, "fold": {"k": 3, "index": 2}}
    kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": options})
    report = json.loads(kedro_runner.path("data/08_reporting/dataset_report.json").read_text())
    assert report["holdout"]["kind"] == "grouped" and report["holdout"]["fold"] == {"k": 3, "index": 2}
    assert report["counts"]["val"] == 4 and len(report["holdout"]["held_out"]) == 1
    assert len(read_manifest(kedro_runner, "val_manifest")) == 4

    outputs = [kedro_runner.path(f"data/05_model_input/{m}.json") for m in MANIFESTS]
    for path in outputs:
        path.unlink()
    (root / "groups.csv").write_text("tile,scene\n" + "".join(f"{t},s0\n" for t in ids[1:]))
    with pytest.raises(TileValidationError, match=f"{ids[0]}.tif: tile id not in the hold-out group table"):
        kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": options})
    assert not any(path.exists() for path in outputs)
    with pytest.raises(ValueError, match="unknown key 'hold_out' in data_prep; did you mean 'holdout'"):
        kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"hold_out": 3}})


@pytest.mark.realdata
def test_rs8_environment_holds_out_whole_source_images(kedro_runner, rs8_root: Path):
    """conf/rs8 finds sources.csv under data_root and keeps every source image on one side."""
    import csv

    kedro_runner.run("data_prep", env="rs8", params={"data_root": str(rs8_root)})
    report = json.loads(kedro_runner.path("data/08_reporting/dataset_report.json").read_text())
    assert report["holdout"]["kind"] == "grouped" and report["holdout"]["classes_without_val_pixels"] == []
    assert abs(report["counts"]["val"] - 73) <= 24  # a DeepGlobe image: 24 tiles, the largest group
    with open(rs8_root / "train" / "sources.csv", newline="") as f:
        source = {row["id"]: row["source"].split("@")[0] for row in csv.DictReader(f)}
    sides = [
        {source[Path(e["filename"]).stem] for e in read_manifest(kedro_runner, m)}
        for m in ("train_manifest", "val_manifest")
    ]
    assert sides[0].isdisjoint(sides[1]) and sides[1] == set(report["holdout"]["held_out"])
