"""Scene mapping and tile prediction on Dask clusters on 127.0.0.1 (no dashboard) against in-process."""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from naic_seg.core.checkpoint import load_checkpoint
from naic_seg.core.distributed import (
    KILL_ALWAYS_ENV,
    KILL_ONCE_ENV,
    ClusterError,
    ClusterOptions,
    MapDistributed,
    ModelSpec,
    SubmitDistributed,
    connect,
    cpu_count,
    local_cluster,
)
from naic_seg.core.distributed_map import DistributedSceneMapper
from naic_seg.core.distributed_submit import distributed_records
from naic_seg.core.labels import ClassTable
from naic_seg.core.predict import PredictConfig, Predictor, predict_tiles
from naic_seg.core.scenes import SceneOptions, area_table, check_scenes, map_scene, score_map
from naic_seg.core.submission import prediction_records
from naic_seg.core.synthetic import write_synthetic_scenes
from tests.conftest import make_tree
from tests.pipelines.test_map_scenes import random_checkpoint

CLASSES = ClassTable.naic()
CFG = PredictConfig(engine="torch", device="cpu", amp="none", channels_last=False, batch_size=4, workers=0)


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each, on 127.0.0.1, no dashboard: shared by the tests that reach
    it as an existing scheduler (tcp://...)."""
    with local_cluster(2, threads=1) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("model") / "random.pt", input_size=32, tile_size=64)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("scenes") / "demo"
    write_synthetic_scenes(root=str(root), seed=0)
    return sorted(p for p in root.glob("*.tif") if not p.stem.endswith("_label"))


@contextmanager
def one_thread():
    """The in-process reference at the workers' one thread: float32 sums in PyTorch's kernels may differ in
    their last bit between thread counts (measured 3e-7 on a ResNet-18 PSPNet), which can flip a near-tie."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def map_in_process(scenes, folder, model, cfg=CFG):
    predictor = Predictor.from_checkpoints([load_checkpoint(model)], cfg, CLASSES)
    opts = SceneOptions(window=64, overlap=0.25, batch_size=cfg.batch_size)
    with one_thread():
        for scene in scenes:
            map_scene(scene, folder / scene.name, predictor.window_logits, CLASSES, opts)
    return opts, predictor


def map_distributed(scenes, folder, model, opts, distributed, cfg=CFG):
    infos = check_scenes(scenes, opts)
    spec = ModelSpec.of([load_checkpoint(model)], cfg, CLASSES)
    mapper = DistributedSceneMapper(infos, spec, opts, distributed)
    results = {name: write(folder / f"{name}.tif") for name, write in mapper.pairs()}
    return mapper, results


def assert_same_maps(a: Path, b: Path, scenes) -> None:
    for scene in scenes:
        with rasterio.open(a / scene.name) as x, rasterio.open(b / scene.name) as y:
            np.testing.assert_array_equal(x.read(1), y.read(1))
            assert (x.profile, x.colormap(1), x.overviews(1)) == (y.profile, y.colormap(1), y.overviews(1))
            assert y.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert area_table(a / scene.name, CLASSES) == area_table(b / scene.name, CLASSES)
        label = scene.with_name(f"{scene.stem}_label.tif")
        assert score_map(a / scene.name, label, CLASSES) == score_map(b / scene.name, label, CLASSES)
    assert sorted(p.name for p in b.iterdir()) == sorted(s.name for s in scenes)  # no band file or temporary


@pytest.mark.parametrize("split_above_mpx", [None, 0.1])
def test_cluster_maps_equal_in_process_maps_whole_and_in_bands(
    cluster, model, scenes, tmp_path, split_above_mpx
):
    opts, _ = map_in_process(scenes, (tmp_path / "in_process").mkdir() or tmp_path / "in_process", model)
    out = tmp_path / "cluster"
    out.mkdir()
    distributed = MapDistributed(address=cluster, split_above_mpx=split_above_mpx, timeout_s=20)
    mapper, results = map_distributed(scenes, out, model, opts, distributed)
    if split_above_mpx:
        assert {n: len(b) for n, b in mapper.bands.items()} == {"scene_0": 4, "scene_1": 3}
        assert results["scene_0"].extra["bands"] == 4
    assert_same_maps(tmp_path / "in_process", out, scenes)
    assert all("torch" in str(r.extra.get("engine", "torch")) for r in results.values())


def test_workers_run_the_onnxruntime_engine_asked_for(cluster, model, scenes, tmp_path):
    cfg = PredictConfig(engine="onnxruntime", device="cpu", batch_size=4, workers=0)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    opts, predictor = map_in_process(scenes[1:], tmp_path / "a", model, cfg)
    assert predictor.engine.name == "onnxruntime"
    _, results = map_distributed(
        scenes[1:], tmp_path / "b", model, opts, MapDistributed(address=cluster), cfg
    )
    assert results["scene_1"].extra["engine"].startswith("onnxruntime")
    assert_same_maps(tmp_path / "a", tmp_path / "b", scenes[1:])


def test_a_worker_killed_in_its_first_task_leaves_complete_maps(model, scenes, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))  # read by the workers the local cluster starts
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    opts, _ = map_in_process(scenes[1:], tmp_path / "a", model)
    distributed = MapDistributed(address="local:2", retries=2, split_above_mpx=0.1)  # 3 bands
    map_distributed(scenes[1:], tmp_path / "b", model, opts, distributed)
    assert marker.read_text().startswith("scene 'scene_1' band ")  # a worker did die, mid-task
    assert_same_maps(tmp_path / "a", tmp_path / "b", scenes[1:])


def test_out_of_retries_the_error_names_the_scene_and_no_map_is_left(model, scenes, tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_ALWAYS_ENV, "scene 'scene_0' band 2/2")
    opts = SceneOptions(window=64, overlap=0.25, batch_size=4)
    distributed = MapDistributed(address="local:2", retries=1, split_above_mpx=0.2)
    started = time.perf_counter()
    with pytest.raises(
        ClusterError, match=r"map_scenes: scene 'scene_0' band 2/2 \(rows \d+\.\.700\) failed after 1"
    ):
        map_distributed(scenes, tmp_path, model, opts, distributed)
    assert time.perf_counter() - started < 120
    assert not list(tmp_path.glob("scene_0*")) and not list(tmp_path.glob(".scene_0*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_nobody_answers_at_fails_within_the_timeout_naming_it():
    address = f"tcp://127.0.0.1:{free_port()}"  # bound then closed: nothing listens there
    started = time.perf_counter()
    with (
        pytest.raises(ClusterError, match=f"no Dask scheduler answers at {address} within 2 s"),
        connect(ClusterOptions(address=address, timeout_s=2)),
    ):
        pass
    assert time.perf_counter() - started < 10


def test_options_refuse_unknown_keys_and_bad_addresses():
    block = {"address": "local", "retries": 2, "timeout_s": 30, "dashboard": False, "split_above_mpx": None}
    assert MapDistributed.from_params(block, "map_scenes.distributed").local_workers() == cpu_count()
    with pytest.raises(ValueError, match="unknown key 'chunk_size' in map_scenes.distributed; valid: addr"):
        MapDistributed.from_params({**block, "chunk_size": 3}, "map_scenes.distributed")
    with pytest.raises(ValueError, match="^map_scenes.distributed.address must be null, local, local:N or"):
        MapDistributed.from_params({**block, "address": "localhost:8786"}, "map_scenes.distributed")
    with pytest.raises(ValueError, match="^map_scenes.distributed.retries must be at least 0, got -1"):
        MapDistributed.from_params({**block, "retries": -1}, "map_scenes.distributed")
    with pytest.raises(ValueError, match="null, local, local:N or tcp://host:port; got 'localhost:8786'"):
        ClusterOptions(address="localhost:8786")
    assert ClusterOptions(address="local:3").local_workers() == 3
    assert ClusterOptions(address="tcp://127.0.0.1:8786").local_workers() is None
    assert SubmitDistributed().in_process
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        SubmitDistributed(max_in_flight=0)


def test_cluster_records_equal_in_process_records(cluster, model, tmp_path):
    root = make_tree(tmp_path / "tiles", n_train=0, n_test=23, size=48)
    manifest = [{"filename": str(p)} for p in sorted((root / "test" / "images").iterdir())]
    checkpoints = [load_checkpoint(model)]
    with one_thread():
        predictor = Predictor.from_checkpoints(checkpoints, CFG, CLASSES)
        expected = list(prediction_records(predict_tiles(manifest, predictor)))
    distributed = SubmitDistributed(address=cluster, chunk_size=5, max_in_flight=2)
    got = list(distributed_records(manifest, ModelSpec.of(checkpoints, CFG, CLASSES), distributed))
    assert len(got) == 23 and [tid for tid, _ in got] == [tid for tid, _ in expected]
    assert got == expected
