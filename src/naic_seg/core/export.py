"""ONNX export of a checkpoint's network (eval mode, logits only), a check against PyTorch, and the cache of
exported graphs the ONNX Runtime engine (:mod:`naic_seg.core.engines`) runs.

The input size is static: PSPNet's pyramid pooling (adaptive average pooling to 1/2/3/6 bins) exports to
ONNX only for a fixed feature-map size, so a graph is traced at one ``input_size`` (one graph per size).
The batch axis is dynamic: the engine feeds whole batches (measured: as fast per image as a fixed-batch
graph fed one image at a time at batch 1, and faster at batch 8). Callers resize tiles to that size and
normalise them as the checkpoint's ``preprocess.normalization`` says (``(x / 255 - mean) / std``) themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from naic_seg.core.atomic import atomic_path
from naic_seg.core.normalization import Normalizer, checkpoint_normalization
from naic_seg.core.predict import load_models
from naic_seg.core.runtime import Runtime

log = logging.getLogger(__name__)

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
    """The checkpoint's network in eval mode on the CPU, float32, returning logits (a misfit raises
    :class:`~naic_seg.core.checkpoint.CheckpointError` naming the checkpoint)."""
    (model,) = load_models([checkpoint], Runtime(torch.device("cpu"), None, False))
    return _Logits(model).eval()


def input_size(checkpoint: dict, size: int | None = None) -> int:
    size = size or checkpoint.get("preprocess", {}).get("input_size")
    if not size:
        raise ValueError("the checkpoint has no preprocess.input_size: pass the export size explicitly")
    return int(size)


def export_onnx(
    checkpoint: dict, path: str | Path, size: int | tuple[int, int] | None = None, dynamic_batch: bool = True
) -> Path:
    """Write ``path``: input ``image`` float32 N x 3 x H x W (normalised), output ``logits`` N x C x H x W;
    H x W static (``size``, default the checkpoint's input size), N dynamic unless ``dynamic_batch`` is off
    (then 1)."""
    height, width = _size_pair(checkpoint, size)
    model = network(checkpoint)
    dummy = torch.zeros(2 if dynamic_batch else 1, 3, height, width)
    batch = {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=4096)},)} if dynamic_batch else {}
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
            **batch,
        )
        program.save(str(tmp))
    return Path(path)


def _size_pair(checkpoint: dict, size: int | tuple[int, int] | None) -> tuple[int, int]:
    if isinstance(size, tuple | list):
        return int(size[0]), int(size[1])
    side = input_size(checkpoint, size)
    return side, side


def export_settings(size: tuple[int, int]) -> dict:
    """What, besides the weights, decides the exported graph: a change to any of it rebuilds the cache."""
    return {
        "size": list(size),
        "opset": OPSET,
        "dynamic_batch": True,
        "exporter": "dynamo",
        "torch": torch.__version__.split("+")[0],
    }


def checkpoint_key(checkpoint: dict, settings: dict) -> str:
    """A digest of the checkpoint's network (configuration and every weight's bytes) and export settings."""
    digest = hashlib.sha256()
    config = {k: v for k, v in checkpoint["model"].items() if k != "pretrained"}
    digest.update(json.dumps([config, settings], sort_keys=True).encode())
    for name, tensor in sorted(checkpoint["state_dict"].items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def cache_folder(checkpoint: dict) -> Path:
    """``onnx/`` beside the checkpoint's file; for a checkpoint that has none, one in the temp folder."""
    source = checkpoint.get("source")
    if source and Path(source).is_file():
        return Path(source).parent / "onnx"
    return Path(tempfile.gettempdir()) / "naic_seg_onnx"


def cached_onnx(checkpoint: dict, size: int | tuple[int, int] | None = None) -> Path:
    """The checkpoint's graph at ``size`` (dynamic batch), exported once and reused while the weights and
    the export settings stay the same; a graph of the same checkpoint name and size built from other
    weights or settings is replaced."""
    height, width = _size_pair(checkpoint, size)
    settings = export_settings((height, width))
    key = checkpoint_key(checkpoint, settings)[:16]
    stem = Path(checkpoint.get("source") or "checkpoint").stem
    folder = cache_folder(checkpoint)
    path = folder / f"{stem}.{height}x{width}.{key}.onnx"
    if path.is_file():
        log.info("ONNX graph %s reused (same weights and export settings)", path)
        return path
    started = time.perf_counter()
    try:
        export_onnx(checkpoint, path, (height, width))
    except OSError as err:  # a read-only folder (a shared checkpoint, a served model's artifacts)
        temp = Path(tempfile.gettempdir()) / "naic_seg_onnx" / path.name
        log.info("cannot write the ONNX cache beside the checkpoint (%s): using %s", err, temp.parent)
        if not temp.is_file():
            export_onnx(checkpoint, temp, (height, width))
        return temp
    for stale in folder.glob(f"{stem}.{height}x{width}.*.onnx"):
        if stale != path:
            stale.unlink(missing_ok=True)
    log.info("ONNX graph %s exported in %.1f s", path, time.perf_counter() - started)
    return path


def check_onnx(
    checkpoint: dict, path: str | Path, images: np.ndarray | torch.Tensor, atol: float = ATOL
) -> float:
    """Largest |ONNX Runtime - PyTorch| over the logits of uint8 ``images`` (N x 3 x S x S, one run per
    image), both fed the checkpoint's normalisation; raises above ``atol``."""
    import onnxruntime as ort

    normalize = Normalizer.of(checkpoint_normalization([checkpoint]))
    x = normalize(torch.tensor(np.asarray(images)))  # a copy: PIL arrays are read-only
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
