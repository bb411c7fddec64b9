"""ONNX export of a checkpoint's network, checked against PyTorch's logits with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from naic_seg.core.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from naic_seg.core.export import ATOL, check_onnx, export_onnx
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model


def tiny_checkpoint(size: int = 64, arch: str = "pspnet") -> dict:
    torch.manual_seed(0)
    config = {"arch": arch, "encoder": "resnet18", "num_classes": 8, "output_stride": 16}
    model = build_model(**config, pretrained=None)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode differs from train mode
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    classes = ClassTable.naic().as_config()
    return make_checkpoint(config, model.state_dict(), 1, None, classes, "stage2", {"input_size": size})


def test_tiny_pspnet_exports_and_matches_pytorch(tmp_path: Path):
    # 64 px at stride 16 is a 4 x 4 feature map: the 3- and 6-bin pyramid pools do not divide it, which the
    # TorchScript exporter refuses.
    ckpt = tiny_checkpoint(64)
    path = export_onnx(ckpt, tmp_path / "model.onnx")
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    diff = check_onnx(ckpt, path, images)
    assert 0 <= diff <= ATOL


def test_check_fails_for_another_network(tmp_path: Path):
    path = export_onnx(tiny_checkpoint(64), tmp_path / "model.onnx")
    other = tiny_checkpoint(64) | {"state_dict": build_model("pspnet", "resnet18").state_dict()}
    images = np.random.default_rng(1).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    with pytest.raises(AssertionError, match="differ from PyTorch"):
        check_onnx(other, path, images)


def test_size_is_required(tmp_path: Path):
    ckpt = tiny_checkpoint(64) | {"preprocess": {}}
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(ckpt, tmp_path / "model.onnx")


@pytest.mark.slow
def test_real_tiles_match(tmp_path: Path, rs8_root: Path):
    """A checkpoint saved and re-read, exported at 128 px, on real rs8 tiles resized to it."""
    ckpt_path = tmp_path / "ckpt.pt"
    save_checkpoint(tiny_checkpoint(128), ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    path = export_onnx(ckpt, tmp_path / "model.onnx")
    files = sorted((rs8_root / "train" / "images").glob("*.tif"))[:4]
    tiles = [np.asarray(Image.open(f).convert("RGB").resize((128, 128), Image.BILINEAR)) for f in files]
    images = np.stack(tiles).transpose(0, 3, 1, 2).copy()
    assert check_onnx(ckpt, path, images) <= ATOL
