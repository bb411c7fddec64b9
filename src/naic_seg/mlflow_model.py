"""The trained model as an MLflow model: loadable with ``mlflow.pyfunc.load_model``, servable with
``mlflow models serve``, registered in the model registry.

Why a ``PythonModel`` and not kedro-mlflow's ``pipeline_ml_factory``: that logs a model only when the whole
training pipeline it is bound to runs, and binds the inference pipeline's catalog datasets into the model;
here ``train_stage2`` alone must log a model, and prediction is a plain library call
(:class:`naic_seg.core.predict.Predictor`) that needs no Kedro at serving time.

The model also carries the network as ONNX (artifact ``onnx``: input ``image`` float32 N x 3 x S x S,
normalised as ``metadata["normalization"]`` says, output ``logits``; see :mod:`naic_seg.core.export`), checked
against PyTorch when it is logged; with ``flip_scale`` TTA or an ensemble, one more graph per scaled size and
per checkpoint (``onnx_<checkpoint>_<h>x<w>``). The ``engine`` it was logged with (``model_export.engine``:
auto, torch or onnxruntime) runs it when served: onnxruntime runs those graphs and never builds the PyTorch
networks; auto times both engines on one image when the model is loaded and keeps the faster.

Input (a pandas DataFrame, one row per image): column ``image``, the base64 text of a PNG or TIFF file of an
RGB (or grey / RGBA, converted) 8-bit image of any size. Output, one row per image: ``class_map``, the base64
text of a PNG of the class map at the image's own size (uint16 NAIC values 100..800, or uint8 class indices,
as the model's ``output_values`` metadata says), and its ``height`` and ``width``. Each image is resized to
the model's input size (PIL bilinear), predicted (with the TTA the model was logged with) and its logits
resized back, exactly as submit does for a tile.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from PIL import Image

from naic_seg.core.checkpoint import load_checkpoint, save_checkpoint
from naic_seg.core.data import resize_image
from naic_seg.core.export import cached_onnx, check_onnx, input_size
from naic_seg.core.labels import PALETTE, ClassTable
from naic_seg.core.predict import PredictConfig, Predictor, checkpoint_normalization, class_map, view_sizes

log = logging.getLogger(__name__)

OUTPUT_VALUES = ("naic", "index")
# What a consumer's environment needs: the network and its preprocessing, not Kedro or MLflow's server.
REQUIREMENTS = (
    "torch",
    "torchvision",
    "segmentation-models-pytorch",
    "timm",
    "numpy",
    "pillow",
    "pandas",
    "onnxruntime",
)


def encode_image(array: np.ndarray) -> str:
    """An image array as the base64 PNG text the model takes and returns."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        return np.asarray(im if im.mode.startswith("I;16") or im.mode == "L" else im.convert("RGB"))


def _rgb(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        return np.asarray(im.convert("RGB"))


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """Class maps for images, from the checkpoint(s) logged as this model's artifacts."""

    def load_context(self, context) -> None:
        options = json.loads(Path(context.artifacts["options"]).read_text())
        self.output_values = options.pop("output_values")
        checkpoints = [
            load_checkpoint(path)
            for key, path in sorted(context.artifacts.items())
            if key.startswith("checkpoint_")
        ]
        self.classes = ClassTable.from_config(checkpoints[0]["classes"])
        options.setdefault("engine", "torch")  # what models logged before the engine option ran
        device = "cpu" if not torch.cuda.is_available() else "auto"
        # One image per call, so auto times the engines on batches of one.
        cfg = PredictConfig(**options, workers=0, batch_size=1, device=device)
        graphs = logged_graphs(context.artifacts, checkpoints)
        self.predictor = Predictor.from_checkpoints(checkpoints, cfg, self.classes, graphs)

    def predict(self, context, model_input, params=None):
        rows = []
        for text in model_input["image"]:
            rgb = _rgb(text)
            # resized as submit's DataLoader resizes a tile (PIL bilinear), so both give the same map
            small = resize_image(rgb, self.predictor.input_size)
            logits = self.predictor.window_logits(
                torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))[None]
            )
            indices = class_map(logits, rgb.shape[:2])[0].to(torch.uint8).numpy()
            values = self.classes.to_value(indices) if self.output_values == "naic" else indices
            rows.append(
                {"class_map": encode_image(values), "height": values.shape[0], "width": values.shape[1]}
            )
        return pd.DataFrame(rows, columns=["class_map", "height", "width"])


def model_metadata(checkpoint: dict, scores: dict, output_values: str) -> dict:
    """What a consumer needs: classes (values, names, colours), input, architecture, scores."""
    classes = ClassTable.from_config(checkpoint["classes"])
    return {
        "classes": [
            {"index": i, "value": v, "name": n, "color": [int(c) for c in PALETTE[i % len(PALETTE)]]}
            for i, (v, n) in enumerate(zip(classes.values, classes.names, strict=True))
        ],
        "output_values": output_values,
        "input_size": checkpoint.get("preprocess", {}).get("input_size"),
        "tile_size": checkpoint.get("preprocess", {}).get("tile_size"),
        "normalization": checkpoint_normalization([checkpoint]),
        "model": {k: v for k, v in checkpoint["model"].items() if k != "pretrained"},
        "scores": scores,
    }


def log_model(
    checkpoints: list[dict], scores: dict, options: dict, registered_model_name: str | None = None
) -> mlflow.models.model.ModelInfo:
    """Log the checkpoints as a pyfunc model ``model`` in the active run (registered when a name is given)."""
    output_values = options.get("output_values", "naic")
    if output_values not in OUTPUT_VALUES:
        raise ValueError(f"output_values must be one of {OUTPUT_VALUES}, got {output_values!r}")
    engine = options.get("engine", "auto")
    predict_options = {"tta": options.get("tta", "none"), "output_values": output_values, "engine": engine}
    example_tile = np.zeros((64, 64, 3), dtype=np.uint8)
    example_tile[:, 32:] = (40, 120, 60)
    example = pd.DataFrame({"image": [encode_image(example_tile)]})
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {"options": str(Path(tmp) / "options.json")}
        Path(artifacts["options"]).write_text(json.dumps(predict_options))
        for i, ckpt in enumerate(checkpoints):
            artifacts[f"checkpoint_{i}"] = str(Path(tmp) / f"checkpoint_{i}.pt")
            save_checkpoint(ckpt, artifacts[f"checkpoint_{i}"])
        if options.get("onnx", True) or engine != "torch":
            artifacts |= onnx_artifacts(checkpoints, predict_options["tta"], example_tile, Path(tmp))
        probe = SegmentationModel()  # the output example comes from the very code that will serve
        probe.load_context(type("Context", (), {"artifacts": artifacts})())
        output = probe.predict(None, example)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=SegmentationModel(),
            artifacts=artifacts,
            code_paths=[str(Path(__file__).parent)],
            pip_requirements=[f"{name}=={version(name)}" for name in REQUIREMENTS],
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            metadata=model_metadata(checkpoints[0], scores, output_values),
            registered_model_name=registered_model_name,
        )


def _artifact_key(index: int, size: tuple[int, int], main: tuple[int, int]) -> str:
    return "onnx" if (index, size) == (0, main) else f"onnx_{index}_{size[0]}x{size[1]}"


def onnx_artifacts(checkpoints: list[dict], tta: str, tile: np.ndarray, folder: Path) -> dict[str, str]:
    """Every graph the served ONNX Runtime engine needs (each checkpoint at each size the TTA views feed),
    copied from the run's cache into ``folder`` (the main one as ``model.onnx``) and checked against PyTorch
    on ``tile`` resized to its size."""
    side = input_size(checkpoints[0])
    main = (side, side)
    artifacts = {}
    for i, ckpt in enumerate(checkpoints):
        for size in view_sizes(PredictConfig(tta=tta), main):
            key = _artifact_key(i, size, main)
            artifacts[key] = str(folder / ("model.onnx" if key == "onnx" else f"{key}.onnx"))
            shutil.copyfile(cached_onnx(ckpt, size), artifacts[key])
    small = resize_image(tile, side)
    diff = check_onnx(checkpoints[0], artifacts["onnx"], small.transpose(2, 0, 1)[None])
    log.info("ONNX graph %s: max |ONNX - PyTorch| %.2e", artifacts["onnx"], diff)
    return artifacts


def logged_graphs(artifacts: dict, checkpoints: list[dict]):
    """The ONNX graphs a logged model carries; a size it lacks is exported from its checkpoint."""
    side = checkpoints[0].get("preprocess", {}).get("input_size")
    main = (side, side)

    def graph(index: int, size: tuple[int, int]) -> Path:
        key = _artifact_key(index, tuple(size), main)
        return Path(artifacts[key]) if key in artifacts else cached_onnx(checkpoints[index], size)

    return graph


def tag_registered_version(name: str, number: str | int, scores: dict, description: str) -> None:
    """Tag a registered version with the hold-out scores and describe it."""
    client = mlflow.MlflowClient()
    for key, value in scores.items():
        client.set_model_version_tag(name, str(number), key, f"{value:.4f}")
    client.update_model_version(name, str(number), description=description)
