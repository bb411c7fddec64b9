"""benchmarks.holdout_tta chooses submit's TTA on the hold-out: it must score each mode on the run's own
hold-out tiles with the run's newest checkpoint, as submit predicts, and pair the modes fold by fold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import holdout_tta
from naic_seg.core.checkpoint import load_checkpoint
from naic_seg.core.data import read_label
from naic_seg.core.labels import ClassTable
from naic_seg.core.metrics import confusion_matrix, scores
from naic_seg.core.predict import PredictConfig, predict_manifest


def test_scores_each_mode_on_the_holdout_with_the_newest_checkpoint(demo_run, tmp_path):
    # two "folds": the demo run and a copy of it (same scores, so every paired difference is measured as 0)
    folder = tmp_path / "runs"
    folder.mkdir()
    for name in ("fold0", "fold1"):
        shutil.copytree(demo_run / "data", folder / name / "data")
        shutil.copytree(demo_run / "conf", folder / name / "conf")
    out = tmp_path / "tta.json"
    assert holdout_tta.main([str(folder), "--tta", "none", "flip", "--workers", "0", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [p["project"] for p in doc["projects"]] == ["fold0", "fold1"]

    # the "none" figure is the hold-out's mIoU recomputed independently from the same checkpoint
    project = folder / "fold0"
    manifest = json.loads((project / holdout_tta.MANIFEST).read_text())
    ckpt_path = holdout_tta.newest_checkpoint(project, "stage2")
    assert doc["projects"][0]["checkpoint"] == str(ckpt_path)
    classes = ClassTable.from_config(load_checkpoint(ckpt_path)["classes"])
    cm = torch.zeros(classes.num_classes, classes.num_classes, dtype=torch.int64)
    labels = {Path(e["filename"]).stem: e["ann"]["seg_map"] for e in manifest}
    cfg = PredictConfig(tta="none", engine="torch", batch_size=16, workers=0)
    for tile_id, pred in predict_manifest(manifest, [load_checkpoint(ckpt_path)], cfg, classes):
        truth = torch.from_numpy(classes.to_index(read_label(labels[tile_id])))
        cm += confusion_matrix(torch.from_numpy(pred.astype(np.int64)), truth, classes.num_classes)
    expected = scores(cm, classes.names)["mIoU"]
    assert doc["projects"][0]["modes"]["none"]["mIoU"] == pytest.approx(expected)
    assert doc["projects"][0]["tiles"] == len(manifest)

    summary = doc["summary"]
    assert summary["none"]["mIoU"]["mean"] == pytest.approx(expected, abs=1e-4)
    assert summary["flip"]["minus_none"]["mean"] == pytest.approx(
        doc["projects"][0]["modes"]["flip"]["mIoU"] - expected, abs=1e-4
    )
    assert summary["flip"]["minus_none"]["sd"] == pytest.approx(0.0, abs=1e-6)


def test_newest_checkpoint_takes_the_latest_version(tmp_path):
    root = tmp_path / "data" / "06_models" / "stage2_checkpoint.pt"
    for version in ("2026-01-01T00.00.00.000Z", "2026-02-01T00.00.00.000Z"):
        (root / version).mkdir(parents=True)
        (root / version / "stage2_checkpoint.pt").write_bytes(b"")
    assert holdout_tta.newest_checkpoint(tmp_path, "stage2").parent.name == "2026-02-01T00.00.00.000Z"
    with pytest.raises(FileNotFoundError, match="stage1_checkpoint.pt"):
        holdout_tta.newest_checkpoint(tmp_path, "stage1")


def test_refuses_a_folder_without_projects(tmp_path):
    with pytest.raises(FileNotFoundError, match="val_manifest.json"):
        holdout_tta.find_projects([tmp_path])
