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
networks; auto times both engines on a batch of ``batch_size`` inputs when the model is loaded and keeps the
faster.

Input (a pandas DataFrame, one row per image): column ``image``, the base64 text of a PNG or TIFF file of an
RGB (or grey / RGBA, converted) 8-bit image of any size. Output, one row per image: ``class_map``, the base64
text of a PNG of the class map at the image's own size (uint16 NAIC values 100..800, or uint8 class indices,
as the model's ``output_values`` metadata says), and its ``height`` and ``width``. Each image goes through the
prediction core exactly as submit predicts a tile (:func:`naic_seg.core.predict.predict_image`): with
``mode: auto``, an image with a side above ``slide_above`` is covered by overlapping ``window``-pixel windows
(each resized to the input size), a smaller one is resized to the input size (PIL bilinear) and its logits
back; TTA, windows and engine as the model was logged with.

The artifact ``options.json`` holds those settings (:data:`SERVED_KEYS` and ``output_values``, from
``model_export`` in ``conf/base/parameters_model_export.yml``). A model logged by older code lacks some keys
and loads with what it did then (:data:`LEGACY_OPTIONS`: every image resized, on torch, one at a time).
The class was called ``SegmentationModel`` until it was renamed :class:`NaicSegPyfunc` (the network in
:mod:`naic_seg.core.models` has that name); the old name stays as an alias, since registered versions
pickled a reference to ``naic_seg.mlflow_model.SegmentationModel``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
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
from naic_seg.core.normalization import checkpoint_normalization
from naic_seg.core.predict import (
    PredictConfig,
    Predictor,
    predict_image,
    view_sizes,
)

log = logging.getLogger(__name__)

OUTPUT_VALUES = ("naic", "index")
# The prediction settings options.json carries (PredictConfig fields), as submit's block names them.
SERVED_KEYS = (
    "mode",
    "slide_above",
    "window",
    "overlap",
    "tta",
    "tta_scales",
    "input_size",
    "batch_size",
    "engine",
)
# What a model logged before options.json held a key did without it: each image resized to the input size
# (mode), one at a time (batch_size), on PyTorch (engine). Keys absent from both took PredictConfig's defaults
# then as now (tta_scales, input_size: the checkpoint's); slide_above, window and overlap go unused in resize.
LEGACY_OPTIONS = {"mode": "resize", "batch_size": 1, "engine": "torch"}
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


class NaicSegPyfunc(mlflow.pyfunc.PythonModel):
    """Class maps for images, from the checkpoint(s) logged as this model's artifacts, predicted as submit
    predicts a tile."""

    def load_context(self, context) -> None:
        options = LEGACY_OPTIONS | json.loads(Path(context.artifacts["options"]).read_text())
        self.output_values = options.pop("output_values")
        checkpoints = [
            load_checkpoint(path)
            for key, path in sorted(context.artifacts.items())
            if key.startswith("checkpoint_")
        ]
        self.classes = ClassTable.from_config(checkpoints[0]["classes"])
        device = "cpu" if not torch.cuda.is_available() else "auto"
        # auto times the engines on batches of batch_size (the windows a large image is cut into)
        cfg = PredictConfig(**options, workers=0, device=device)
        graphs = logged_graphs(context.artifacts, checkpoints)
        self.predictor = Predictor.from_checkpoints(checkpoints, cfg, self.classes, graphs)

    def predict(self, context, model_input, params=None):
        rows = []
        for text in model_input["image"]:
            indices = predict_image(self.predictor, _rgb(text))
            values = self.classes.to_value(indices) if self.output_values == "naic" else indices
            rows.append(
                {"class_map": encode_image(values), "height": values.shape[0], "width": values.shape[1]}
            )
        return pd.DataFrame(rows, columns=["class_map", "height", "width"])


# The class's name before issue 21 renamed it: versions registered before then pickled a reference to it.
SegmentationModel = NaicSegPyfunc


def served_options(options: dict) -> dict:
    """options.json: the prediction settings of ``options`` (model_export's block; a key it lacks takes
    :class:`PredictConfig`'s value, as submit's does), checked, and ``output_values``."""
    output_values = options.get("output_values", "naic")
    if output_values not in OUTPUT_VALUES:
        raise ValueError(f"output_values must be one of {OUTPUT_VALUES}, got {output_values!r}")
    defaults = PredictConfig()
    served = {key: options.get(key, getattr(defaults, key)) for key in SERVED_KEYS}
    served["tta_scales"] = [float(s) for s in served["tta_scales"]]
    PredictConfig(**served)  # refuses a bad mode, tta, engine or overlap now, not when served
    return served | {"output_values": output_values}


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
    predict_options = served_options(options)
    example_tile = np.zeros((64, 64, 3), dtype=np.uint8)
    example_tile[:, 32:] = (40, 120, 60)
    example = pd.DataFrame({"image": [encode_image(example_tile)]})
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {"options": str(Path(tmp) / "options.json")}
        Path(artifacts["options"]).write_text(json.dumps(predict_options))
        for i, ckpt in enumerate(checkpoints):
            artifacts[f"checkpoint_{i}"] = str(Path(tmp) / f"checkpoint_{i}.pt")
            save_checkpoint(ckpt, artifacts[f"checkpoint_{i}"])
        if options.get("onnx", True) or predict_options["engine"] != "torch":
            tta, scales, size = (predict_options[k] for k in ("tta", "tta_scales", "input_size"))
            artifacts |= onnx_artifacts(checkpoints, tta, example_tile, Path(tmp), scales, size)
        probe = NaicSegPyfunc()  # the output example comes from the very code that will serve
        probe.load_context(type("Context", (), {"artifacts": artifacts})())
        output = probe.predict(None, example)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=NaicSegPyfunc(),
            artifacts=artifacts,
            code_paths=[str(Path(__file__).parent)],
            pip_requirements=[f"{name}=={version(name)}" for name in REQUIREMENTS],
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            metadata=model_metadata(checkpoints[0], scores, predict_options["output_values"]),
            registered_model_name=registered_model_name,
        )


def _artifact_key(index: int, size: tuple[int, int], main: tuple[int, int]) -> str:
    return "onnx" if (index, size) == (0, main) else f"onnx_{index}_{size[0]}x{size[1]}"


def onnx_artifacts(
    checkpoints: list[dict],
    tta: str,
    tile: np.ndarray,
    folder: Path,
    tta_scales: Sequence[float] = PredictConfig.tta_scales,
    served_size: int | None = None,
) -> dict[str, str]:
    """Every graph the served ONNX Runtime engine needs (each checkpoint at each size the TTA views of a
    ``served_size`` input feed; default: the checkpoint's input size), copied from the run's cache into
    ``folder`` (the graph at the checkpoint's input size as ``model.onnx``) and checked against PyTorch on
    ``tile`` resized to its size."""
    side = input_size(checkpoints[0])
    main = (side, side)
    served = (served_size, served_size) if served_size else main
    sizes = dict.fromkeys([main, *view_sizes(PredictConfig(tta=tta, tta_scales=tta_scales), served)])
    artifacts = {}
    for i, ckpt in enumerate(checkpoints):
        for size in sizes:
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
