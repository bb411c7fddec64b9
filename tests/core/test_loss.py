"""The training loss options (class weights, OHEM) and the encoder's learning-rate multiplier."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from naic_seg.core.labels import IGNORE_INDEX, ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.training import TrainConfig, train
from naic_seg.core.training.loss import (
    SegmentationLoss,
    balanced_weights,
    class_frequencies,
    resolve_class_weight,
)

MODEL = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}


def _tiles(tmp_path, labels: list[np.ndarray]) -> list[dict]:
    manifest = []
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        image, lab = tmp_path / f"{i}.tif", tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)).save(image)
        Image.fromarray(label.astype(np.uint16)).save(lab)
        manifest.append({"id": str(i), "filename": str(image), "ann": {"seg_map": str(lab)}})
    return manifest


def test_balanced_weights_come_from_the_training_labels_and_favour_the_rare_class(tmp_path):
    table = ClassTable.naic()
    a = np.full((32, 32), table.values[0])  # class 0 everywhere ...
    a[:2, :2] = table.values[7]  # ... but 4 pixels of the last class
    b = np.full((32, 32), table.values[3])
    b[:, :16] = 0  # unlabelled: not counted
    manifest = _tiles(tmp_path, [a, b])
    freq = class_frequencies(manifest, table)
    total = 32 * 32 + 32 * 16
    expected = np.zeros(8)
    expected[0], expected[7], expected[3] = (1024 - 4) / total, 4 / total, 512 / total
    np.testing.assert_allclose(freq, expected)
    w = balanced_weights(freq)
    assert (freq * w).sum() == pytest.approx(1.0)  # the loss keeps its scale
    assert w[7] > w[3] > w[0]  # rarer, heavier
    assert w[7] / w[0] == pytest.approx(np.log(1.02 + freq[0]) / np.log(1.02 + freq[7]))
    assert resolve_class_weight(None, manifest, table) is None


def test_a_class_weight_list_of_the_wrong_length_is_refused_naming_the_classes(tmp_path):
    with pytest.raises(ValueError, match="needs 8 non-negative weights.*water"):
        resolve_class_weight([1.0, 2.0], [], ClassTable.naic())
    with pytest.raises(ValueError, match="null, balanced or a list"):
        resolve_class_weight("inverse", [], ClassTable.naic())
    with pytest.raises(ValueError, match="ohem_thresh"):
        TrainConfig(iterations=1, ohem_thresh=1.5, work_dir=None)


def _logits_and_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8) * 3
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[0, 0, :4] = IGNORE_INDEX
    return logits, labels


def test_without_options_the_loss_is_plain_cross_entropy_and_class_weights_are_torchs():
    logits, labels = _logits_and_labels()
    plain = SegmentationLoss(None, None, 0)(logits, labels)
    assert plain == pytest.approx(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX).item())
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    weighted = SegmentationLoss(w, None, 0)(logits, labels)
    expected = F.cross_entropy(logits, labels, weight=w, ignore_index=IGNORE_INDEX)
    assert weighted.item() == pytest.approx(expected.item())


def test_ohem_averages_over_the_hard_pixels_only_and_keeps_at_least_min_kept():
    logits, labels = _logits_and_labels()
    valid = labels != IGNORE_INDEX
    target = torch.where(valid, labels, 0)
    prob = logits.softmax(1).gather(1, target.unsqueeze(1)).squeeze(1)
    pixel = F.cross_entropy(logits, target, reduction="none")

    hard = valid & (prob < 0.7)
    assert 0 < hard.sum() < valid.sum()  # the fixture has both easy and hard pixels
    loss = SegmentationLoss(None, 0.7, 0)(logits, labels)
    assert loss.item() == pytest.approx(pixel[hard].mean().item(), rel=1e-5)
    assert loss.item() > F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX).item()

    # min_kept above the hard count: the threshold rises to keep the min_kept hardest pixels (as mmseg).
    k = int(valid.sum()) - 5
    kth = prob[valid].sort().values[k]
    kept = valid & (prob < kth)
    assert int(kept.sum()) == k
    loss_k = SegmentationLoss(None, 0.7, k)(logits, labels)
    assert loss_k.item() == pytest.approx(pixel[kept].mean().item(), rel=1e-5)

    # Ignored pixels never count, however hard.
    logits2 = logits.clone()
    logits2[0, :, 0, :4] = torch.tensor([-50.0, 50.0, 0.0, 0.0])[:, None]
    assert SegmentationLoss(None, 0.7, 0)(logits2, labels).item() == pytest.approx(loss.item(), rel=1e-5)


def test_an_encoder_lr_multiplier_of_zero_freezes_the_encoder_and_the_options_train(tmp_path, caplog):
    table = ClassTable.naic()
    rng = np.random.default_rng(1)
    labels = [rng.choice(np.asarray(table.values[:4]), size=(32, 32)) for _ in range(6)]
    labels[0][:4, :4] = table.values[7]
    manifest = _tiles(tmp_path, labels)
    cfg = TrainConfig(
        work_dir=None,
        iterations=3,
        batch_size=2,
        lr=0.05,
        input_size=32,
        workers=0,
        eval_interval=1000,
        log_interval=1,
        checkpoint_interval=1000,
        seed=5,
        encoder_lr_mult=0.0,
        class_weight="balanced",
        ohem_thresh=0.7,
        ohem_min_kept=256,
    )
    torch.manual_seed(cfg.seed)
    initial = build_model(**MODEL).state_dict()
    logged = []
    with caplog.at_level(logging.INFO, logger="naic_seg.core.training.loss"):
        result = train(MODEL, cfg, manifest, manifest[:2], table, log_fn=lambda m, s: logged.append(m))
    assert "class weights (balanced, from 6 training labels)" in caplog.text
    assert all(np.isfinite(m["loss"]) for m in logged if "loss" in m)
    params = dict(build_model(**MODEL).named_parameters())
    enc = [k for k in params if k.startswith("encoder.")]
    head = [k for k in params if not k.startswith("encoder.")]
    assert enc and head
    assert all(torch.equal(result.state_dict[k], initial[k]) for k in enc)
    assert any(not torch.equal(result.state_dict[k], initial[k]) for k in head)


def test_the_loss_options_and_encoder_rate_are_part_of_the_resume_fingerprint():
    base = TrainConfig(iterations=1, work_dir=None)
    for change in ({"encoder_lr_mult": 0.1}, {"class_weight": "balanced"}, {"ohem_thresh": 0.7}):
        other = TrainConfig(iterations=1, work_dir=None, **change)
        assert other.fingerprint({}, 1, 1) != base.fingerprint({}, 1, 1), change
