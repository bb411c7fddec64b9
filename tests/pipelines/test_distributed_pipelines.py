"""map_scenes and submit through Kedro on `distributed.address: local:2` against the same in-process runs."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import rasterio

from naic_seg.core.submission import PredictionsReader
from tests.conftest import make_tree
from tests.core.test_distributed import one_thread
from tests.pipelines.test_map_scenes import assert_cog_like, random_checkpoint

PREDICT = {"device": "cpu", "engine": "torch", "amp": "none", "channels_last": False, "batch_size": 4}
CLUSTER = {"address": "local:2", "timeout_s": 60}


def test_map_scenes_on_a_local_cluster_equals_in_process(kedro_runner, tmp_path):
    project = kedro_runner.project
    ckpt = random_checkpoint(tmp_path / "random.pt")
    # The demo makes the GIS products too; the confidence is made in-process only.
    params = {"map_scenes": {"checkpoints": [str(ckpt)], "confidence": False, **PREDICT}}
    outputs = ("data/07_model_output/scene_maps", "data/08_reporting/scene_areas.json")
    outputs += ("data/08_reporting/scene_scores.json",)
    with one_thread():  # the workers' thread count (see tests/core/test_distributed.py)
        kedro_runner.run("map_scenes", env="demo", params=params)
    for path in outputs:
        (tmp_path / "in_process" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(project / path, tmp_path / "in_process" / path)

    # scene_0 (0.39 Mpx) in 4 bands, scene_1 (0.22 Mpx) in 3
    params["map_scenes"]["distributed"] = {**CLUSTER, "split_above_mpx": 0.1}
    kedro_runner.run("map_scenes", env="demo", params=params)
    maps, expected = project / outputs[0], tmp_path / "in_process" / outputs[0]
    assert sorted(p.name for p in maps.glob("*.tif")) == ["scene_0.tif", "scene_1.tif"]
    for name in ("scene_0.tif", "scene_1.tif"):
        assert_cog_like(maps / name, project / "data/01_raw/demo_scenes" / name)
        with rasterio.open(maps / name) as got, rasterio.open(expected / name) as want:
            np.testing.assert_array_equal(got.read(1), want.read(1))
    for path in outputs[1:]:
        assert json.loads((project / path).read_text()) == json.loads(
            (tmp_path / "in_process" / path).read_text()
        )


def test_submit_on_a_local_cluster_equals_in_process(kedro_runner, tmp_path):
    project = kedro_runner.project
    root = make_tree(tmp_path / "tiles", n_train=6, n_test=11, size=48)
    ckpt = random_checkpoint(tmp_path / "random.pt", input_size=32, tile_size=48)
    params = {"data_root": str(root), "data_prep": {"holdout": 1}}
    kedro_runner.run("data_prep", params=params)
    params["submit"] = {"checkpoints": [str(ckpt)], "workers": 0, **PREDICT}
    outputs = ("data/07_model_output/test_predictions.pkl", "data/07_model_output/submission.zip")
    with one_thread():
        kedro_runner.run("submit", params=params)
    for path in outputs:
        shutil.move(project / path, tmp_path / path.rsplit("/", 1)[1])

    params["submit"]["distributed"] = {**CLUSTER, "chunk_size": 3, "max_in_flight": 2}
    kedro_runner.run("submit", params=params)
    got = list(PredictionsReader(project / outputs[0]))
    assert len(got) == 11 and got == list(PredictionsReader(tmp_path / "test_predictions.pkl"))
    with zipfile.ZipFile(project / outputs[1]) as a, zipfile.ZipFile(tmp_path / "submission.zip") as b:
        assert a.namelist() == b.namelist() and len(a.namelist()) == 11
        assert all(a.read(n) == b.read(n) for n in a.namelist())


def test_a_confidence_on_a_cluster_is_refused_before_any_cluster_starts(kedro_runner, tmp_path):
    ckpt = random_checkpoint(tmp_path / "random.pt")
    cluster = {"address": "tcp://127.0.0.1:9", "timeout_s": 1}  # never reached: refused first
    params = {"map_scenes": {"checkpoints": [str(ckpt)], "confidence": True, "distributed": cluster}}
    with pytest.raises(Exception, match="map_scenes.confidence is made in-process only"):
        kedro_runner.run("map_scenes", env="demo", params={**params})
    assert not list((kedro_runner.project / "data/07_model_output").glob("scene_maps/*.tif"))
