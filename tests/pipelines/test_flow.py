"""The whole flow through Kedro: data_prep -> train_stage1 -> train_stage2 -> submit, tracked in MLflow."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from naic_seg.core.checkpoint import load_checkpoint
from naic_seg.core.labels import ClassTable
from tests.conftest import STAGE, TINY


def latest(path: Path) -> Path:
    versions = sorted(path.iterdir())
    assert versions, f"no version under {path}"
    return versions[-1] / path.name


def mlflow_runs(project: Path):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("naic_seg")
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])


def independent_scores(zip_path: Path, label_dir: Path) -> tuple[float, float]:
    """mIoU / FWIoU by per-pixel counting, sharing no code with the project."""
    values = [100, 200, 300, 400, 500, 600, 700, 800]
    inter, truth_n, pred_n = np.zeros(8), np.zeros(8), np.zeros(8)
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            pred = np.asarray(Image.open(zf.open(name)))
            truth = np.asarray(Image.open(label_dir / Path(name).name))
            keep = truth != 0
            for c, v in enumerate(values):
                t, p = (truth == v) & keep, (pred == v) & keep
                inter[c] += (t & p).sum()
                truth_n[c] += t.sum()
                pred_n[c] += p.sum()
    union = truth_n + pred_n - inter
    present = union > 0
    iou = inter[present] / union[present]
    return iou.mean(), float((truth_n[present] / truth_n.sum() * iou).sum())


def test_demo_flow_end_to_end(demo_run):
    project = demo_run

    stage1 = load_checkpoint(latest(project / "data/06_models/stage1_checkpoint.pt"))
    stage2 = load_checkpoint(latest(project / "data/06_models/stage2_checkpoint.pt"))
    assert stage1["model"]["output_stride"] == 16 and stage2["model"]["output_stride"] == 8
    assert stage2["model"]["encoder"] == stage1["model"]["encoder"] == "resnet18"
    assert stage2["iteration"] == 4 and stage2["preprocess"] == {
        "input_size": 64,
        "tile_size": 256,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }

    zip_path = project / "data/07_model_output/submission.zip"
    labels = project / "data/01_raw/demo/test/labels"
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert sorted(names) == sorted(f"results/{p.stem}.png" for p in labels.iterdir())
        for name in names:
            im = Image.open(zf.open(name))
            assert im.mode == "I;16" and im.size == (256, 256)
            assert set(np.unique(np.asarray(im))) <= set(ClassTable.naic().values)

    client, runs = mlflow_runs(project)
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in (
        "stage1.val_mIoU",
        "stage1.val_FWIoU",
        "stage2.val_mIoU",
        "stage2.val_FWIoU",
        "stage1.loss",
        "stage1.lr",
        "stage1.images_per_s",
        "submit.test_mIoU",
        "submit.test_FWIoU",
    ):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "stage1.val_mIoU")] == [2, 4]
    assert run.data.params["train_stage1.train.iterations"] == "4"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "train_stage2")}
    assert artifacts == {"train_stage2/confusion_matrix.png", "train_stage2/validation_grid.png"}

    miou, fwiou = independent_scores(zip_path, labels)
    assert run.data.metrics["submit.test_mIoU"] == pytest.approx(miou)
    assert run.data.metrics["submit.test_FWIoU"] == pytest.approx(fwiou)


def test_two_process_gloo_training_writes_once_from_rank_zero(kedro_runner):
    project = kedro_runner.project
    kedro_runner.run("data_prep", env="demo")
    _, before = mlflow_runs(project)
    params = {
        "train_stage1": {
            **TINY["train_stage1"],
            "distributed": {"nproc": 2},
            "train": {**STAGE, "device": "cpu"},
        }
    }
    kedro_runner.run("train_stage1", env="demo", params=params)
    client, runs = mlflow_runs(project)
    assert len(runs) == len(before) + 1
    run = runs[0]
    assert "stage1.val_mIoU" in run.data.metrics and "stage1.loss" in run.data.metrics
    # 2 ranks x 2 images per iteration: images/s counts both ranks
    assert len(client.get_metric_history(run.info.run_id, "stage1.loss")) == 2
    versions = list((project / "data/06_models/stage1_checkpoint.pt").iterdir())
    assert len(versions) == 1
    work = project / "data/06_models/stage1_work"
    assert [p.name for p in work.iterdir()] == ["resume.pt"]


@pytest.mark.realdata
def test_rs8_flow_end_to_end(kedro_runner, rs8_root):
    project = kedro_runner.project
    kedro_runner.run("__default__", params={"data_root": str(rs8_root), **TINY})
    with zipfile.ZipFile(project / "data/07_model_output/submission.zip") as zf:
        names = zf.namelist()
    assert sorted(names) == sorted(f"results/{p.stem}.png" for p in (rs8_root / "test/images").iterdir())
    assert len(names) == 165
    _, runs = mlflow_runs(project)
    metrics = runs[0].data.metrics
    assert 0 <= metrics["submit.test_mIoU"] <= 1 and "stage2.val_FWIoU" in metrics
