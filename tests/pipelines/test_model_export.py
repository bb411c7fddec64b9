"""`train_stage2` run alone (`kedro run --pipeline train_stage2` given a stage-1 checkpoint) trains, logs to
MLflow and registers the model; `model_export.register: false` and `log_model: false` do what they say."""

from __future__ import annotations

import pytest
import torch
from kedro.io.core import Version, generate_timestamp

from naic_seg.core.checkpoint import make_checkpoint
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.datasets import TorchCheckpointDataset
from tests.conftest import TINY, make_tree
from tests.pipelines.test_flow import mlflow_runs

MODEL = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}


def stage1_in_catalog(project) -> None:
    """A stage-1 checkpoint saved where the catalog's versioned `stage1_checkpoint` keeps it (no training)."""
    torch.manual_seed(0)
    preprocess = {"input_size": 64, "tile_size": 32}
    checkpoint = make_checkpoint(
        MODEL, build_model(**MODEL).state_dict(), 4, {}, ClassTable.naic().as_config(), "stage1", preprocess
    )
    path = str(project / "data/06_models/stage1_checkpoint.pt")
    TorchCheckpointDataset(path, version=Version(None, generate_timestamp())).save(checkpoint)


@pytest.mark.parametrize(
    ("switches", "logged", "registered"),
    [({}, True, True), ({"register": False}, True, False), ({"log_model": False}, False, False)],
)
def test_train_stage2_alone_logs_and_registers_its_model_as_the_switches_say(
    kedro_runner, tmp_path, switches, logged, registered
):
    import mlflow

    project = kedro_runner.project
    root = make_tree(tmp_path / "tiles", n_train=6, n_test=1)
    kedro_runner.run("data_prep", params={"data_root": str(root), "data_prep": {"holdout": 2}})
    stage1_in_catalog(project)
    _, before = mlflow_runs(project)
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    versions_before = len(client.search_model_versions("name = 'naic_seg'"))
    export = {"onnx": False, **switches}  # the ONNX copy is tested in tests/test_mlflow_model.py
    outputs = kedro_runner.run(
        "train_stage2", params={"data_root": str(root), **TINY, "model_export": export}
    )

    client, runs = mlflow_runs(project)
    assert len(runs) == len(before) + 1
    run = runs[0]
    assert "stage2.val_mIoU" in run.data.metrics and "stage2.loss" in run.data.metrics
    info = outputs["mlflow_model_info"].load()  # a free output: Kedro hands back its dataset
    assert info["logged"] is logged
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert [m.name for m in models] == (["model"] if logged else [])
    versions = client.search_model_versions("name = 'naic_seg'")
    assert len(versions) == versions_before + registered
    mine = [v for v in versions if v.run_id == run.info.run_id]
    assert len(mine) == registered
    if registered:
        assert info["version"] == mine[0].version and "val_mIoU" in mine[0].tags
    else:
        assert info.get("version") is None
