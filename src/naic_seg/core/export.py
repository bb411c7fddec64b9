"""ONNX export of a checkpoint's network (eval mode, logits only) and a check against PyTorch.

The input size is static: PSPNet's pyramid pooling (adaptive average pooling to 1/2/3/6 bins) exports to
ONNX only for a fixed feature-map size, so the graph is traced at the checkpoint's ``input_size``. Callers
resize tiles to that size and normalise them as the checkpoint's ``preprocess.normalization`` says
(``(x / 255 - mean) / std``) themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from naic_seg.core.atomic import atomic_path
from naic_seg.core.data import Normalizer
from naic_seg.core.models import build_model
from naic_seg.core.predict import checkpoint_normalization

OPSET = 18  # the dynamo exporter's lowest supported opset; onnxruntime >= 1.14 runs it
ATOL = 1e-3  # float32 logits: ONNX Runtime's fused kernels differ from PyTorch's in the last bits


class _Logits(torch.nn.Module):
    """The network's main output only (the auxiliary head is for training)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple | list) else out


def network(checkpoint: dict) -> torch.nn.Module:
    """The checkpoint's network in eval mode on the CPU, returning logits."""
    config = {k: v for k, v in checkpoint["model"].items() if k != "pretrained"}
    model = build_model(**config, pretrained=None)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return _Logits(model).eval()


def input_size(checkpoint: dict, size: int | None = None) -> int:
    size = size or checkpoint.get("preprocess", {}).get("input_size")
    if not size:
        raise ValueError("the checkpoint has no preprocess.input_size: pass the export size explicitly")
    return int(size)


def export_onnx(checkpoint: dict, path: str | Path, size: int | None = None) -> Path:
    """Write ``path``: input ``image`` float32 1 x 3 x S x S (normalised), output ``logits`` 1 x C x S x S;
    every axis static (one tile per call, the simplest graph for other runtimes)."""
    size = input_size(checkpoint, size)
    model = network(checkpoint)
    dummy = torch.zeros(1, 3, size, size)
    with atomic_path(path) as tmp, torch.no_grad():
        # The dynamo exporter: the TorchScript one (dynamo=False) refuses adaptive_avg_pool2d whenever the
        # pyramid's bins (1, 2, 3, 6) do not divide the feature map (e.g. 4 x 4 at 64 px, stride 16),
        # while torch.export decomposes it at the static size into plain pooling / slicing ops.
        program = torch.onnx.export(
            model,
            (dummy,),
            input_names=["image"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
        program.save(str(tmp))
    return Path(path)


def check_onnx(
    checkpoint: dict, path: str | Path, images: np.ndarray | torch.Tensor, atol: float = ATOL
) -> float:
    """Largest |ONNX Runtime - PyTorch| over the logits of uint8 ``images`` (N x 3 x S x S, one run per
    image), both fed the checkpoint's normalisation; raises above ``atol``."""
    import onnxruntime as ort

    stats = checkpoint_normalization([checkpoint])
    x = Normalizer(stats["mean"], stats["std"])(
        torch.tensor(np.asarray(images))
    )  # a copy: PIL arrays are read-only
    with torch.no_grad():
        expected = network(checkpoint)(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["logits"], {"image": x[i : i + 1].numpy()})[0] for i in range(len(x))])
    if got.shape != expected.shape:
        raise AssertionError(f"ONNX logits have shape {got.shape}, PyTorch's {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise AssertionError(f"ONNX logits differ from PyTorch's by up to {diff:.2e} (atol {atol:.0e})")
    return diff
