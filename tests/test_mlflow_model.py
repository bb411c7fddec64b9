"""The trained model outside the project: pyfunc in Python, the registry, ``mlflow models serve``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from naic_seg.core.checkpoint import CheckpointFile, load_checkpoint, make_checkpoint, save_checkpoint
from naic_seg.core.data import resize_image
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.predict import PredictConfig, Predictor, class_map, predict_manifest
from naic_seg.core.submission import decode_png
from naic_seg.mlflow_model import SERVED_KEYS, decode_image, encode_image
from naic_seg.pipelines.submit.nodes import predict_test_tiles
from tests.conftest import PROJECT_ROOT, write_tile

NAME = "naic_seg"


def _client(project: Path):
    import mlflow

    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(uri)


def _latest(path: Path) -> Path:
    return sorted(path.iterdir())[-1] / path.name


def _tile(project: Path, rs8_env: bool) -> Path:
    root = os.environ.get("NAIC_SEG_RS8") if rs8_env else None
    folder = Path(root) / "test" / "images" if root else project / "data/01_raw/demo/test/images"
    return sorted(folder.iterdir())[0]


def _expected(project: Path, tile: Path, engine: str = "torch") -> np.ndarray:
    """The project's own predict path on the same tile with the same checkpoint and engine, as NAIC values."""
    ckpt = load_checkpoint(_latest(project / "data/06_models/stage2_checkpoint.pt"))
    table = ClassTable.from_config(ckpt["classes"])
    (_, indices), *_ = predict_manifest(
        [{"filename": str(tile)}], [ckpt], PredictConfig(workers=0, device="cpu", engine=engine), table
    )
    return table.to_value(indices)


def _b64(tile: Path) -> str:
    with Image.open(tile) as im:
        return encode_image(np.asarray(im.convert("RGB")))


def test_the_run_logs_a_pyfunc_model_that_predicts_what_the_project_predicts(demo_run):
    import mlflow

    client = _client(demo_run)
    (version,) = client.search_model_versions(f"name='{NAME}'")
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version.version}")
    tile = _tile(demo_run, rs8_env=False)
    out = model.predict(pd.DataFrame({"image": [_b64(tile)]}))
    class_map = decode_image(out["class_map"][0])
    with Image.open(tile) as im:
        assert class_map.shape == (im.height, im.width) == (out["height"][0], out["width"][0])
    assert class_map.dtype == np.uint16 and set(np.unique(class_map)) <= set(range(100, 900, 100))
    engine = model.unwrap_python_model().predictor.engine.name  # model_export.engine: auto chose it
    np.testing.assert_array_equal(class_map, _expected(demo_run, tile, engine))

    meta = model.metadata.metadata
    assert [c["value"] for c in meta["classes"]] == list(range(100, 900, 100))
    assert meta["input_size"] == 64 and meta["model"]["arch"] == "pspnet" and "val_mIoU" in meta["scores"]
    assert model.metadata.get_input_schema().input_names() == ["image"]


def test_the_logged_model_carries_the_network_as_onnx_matching_pytorch(demo_run):
    import mlflow

    from naic_seg.core.export import check_onnx

    client = _client(demo_run)
    (version,) = client.search_model_versions(f"name='{NAME}'")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version.version}"))
    (onnx_file,) = local.rglob("model.onnx")
    ckpt = load_checkpoint(_latest(demo_run / "data/06_models/stage2_checkpoint.pt"))
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    assert check_onnx(ckpt, onnx_file, images) <= 1e-3


def _served(local: Path, engine: str, tmp_path: Path, **extra):
    """The logged model's pyfunc class loaded from its artifacts with ``engine`` (and ``extra``) in its
    options."""
    from naic_seg.mlflow_model import NaicSegPyfunc

    artifacts = {p.stem: str(p) for p in (local / "artifacts").iterdir()}
    artifacts["onnx"] = artifacts.pop("model")
    options = json.loads(Path(artifacts["options"]).read_text()) | {"engine": engine} | extra
    artifacts["options"] = str(tmp_path / f"options_{engine}.json")
    Path(artifacts["options"]).write_text(json.dumps(options))
    model = NaicSegPyfunc()
    model.load_context(type("Context", (), {"artifacts": artifacts})())
    return model


def test_the_served_model_on_onnxruntime_runs_the_logged_graph_without_building_the_network(
    demo_run, tmp_path, monkeypatch
):
    import mlflow

    import naic_seg.core.predict

    client = _client(demo_run)
    (version,) = client.search_model_versions(f"name='{NAME}'")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version.version}"))
    assert json.loads((local / "artifacts" / "options.json").read_text())["engine"] == "auto"
    tile = _tile(demo_run, rs8_env=False)
    request = pd.DataFrame({"image": [_b64(tile)]})
    # float32 on both sides (where the CPU runs bf16 natively, torch's auto precision would be bf16)
    by_torch = decode_image(
        _served(local, "torch", tmp_path, amp="none").predict(None, request)["class_map"][0]
    )

    def no_torch_network(*args, **kwargs):
        raise AssertionError("the onnxruntime engine built a PyTorch network")

    monkeypatch.setattr(naic_seg.core.predict, "load_models", no_torch_network)
    onnx = _served(local, "onnxruntime", tmp_path)
    assert onnx.predictor.engine.name == "onnxruntime"
    by_onnx = decode_image(onnx.predict(None, request)["class_map"][0])
    assert by_onnx.shape == by_torch.shape
    assert (by_onnx == by_torch).mean() >= 0.999


def test_each_run_registers_a_version_tagged_with_its_hold_out_scores(demo_run):
    client = _client(demo_run)
    (version,) = client.search_model_versions(f"name='{NAME}'")
    run = client.get_run(version.run_id)
    metrics = json.loads((demo_run / "data/08_reporting/stage2_metrics.json").read_text())["final"]
    assert float(version.tags["val_mIoU"]) == pytest.approx(metrics["mIoU"], abs=1e-4)
    assert float(version.tags["val_FWIoU"]) == pytest.approx(metrics["FWIoU"], abs=1e-4)
    assert "hold-out val_mIoU" in version.description and run.info.run_name.startswith("demo __default__")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _model_server(model_uri: str, tracking_uri: str | None = None) -> Iterator[int]:
    """``mlflow models serve`` of ``model_uri`` on 127.0.0.1 (a free port, yielded) once it answers /ping
    (within 120 s); stopped when the block ends."""
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}  # serve starts uvicorn by name
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    cmd = [f"{bin_dir}/mlflow", "models", "serve", "-m", model_uri]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the model server did not answer /ping within 120 s"
            time.sleep(1)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


def _post(port: int, images: list[str]) -> list[dict]:
    """The served model's answer rows for base64 ``images``, posted as one DataFrame."""
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.loads(r.read())["predictions"]


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_posted_tile_with_its_class_map(demo_run):
    client = _client(demo_run)
    (version,) = client.search_model_versions(f"name='{NAME}'")
    tracking = f"sqlite:///{demo_run / 'mlflow.db'}"
    with _model_server(f"models:/{NAME}/{version.version}", tracking) as port:
        tile = _tile(demo_run, rs8_env=True)
        (row,) = _post(port, [_b64(tile)])
    class_map = decode_image(row["class_map"])
    with Image.open(tile) as im:
        assert class_map.shape == (im.height, im.width) == (row["height"], row["width"])
    assert class_map.dtype == np.uint16 and set(np.unique(class_map)) <= set(range(100, 900, 100))
    # The served model's engine is auto: chosen by timing inside the server, so it is either one.
    candidates = [_expected(demo_run, tile, engine) for engine in ("torch", "onnxruntime")]
    assert any(np.array_equal(class_map, c) for c in candidates)


# --- The served model predicts as submit does: a tiny random network, logged with conf/base's model_export
# block, against the submit node run with conf/base's submit block on the same checkpoint and tiles.

MODEL = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}
TABLE = ClassTable.naic()
LARGE = 1536  # above submit's slide_above (1024): submit slides 256-px windows over it
INPUT = 32  # the network's input side: each window is resized to it (small, so the 64 windows are quick)


def _conf_block(name: str) -> dict:
    return yaml.safe_load((PROJECT_ROOT / "conf" / "base" / f"parameters_{name}.yml").read_text())[name]


def _device() -> str:
    return "cpu" if not torch.cuda.is_available() else "auto"  # as the served model chooses


def _fields(size: int, seed: int) -> np.ndarray:
    """An RGB image of 12 x 12 flat fields with noise, so a network's map has edges to get right."""
    rng = np.random.default_rng(seed)
    blocks = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    image = np.asarray(blocks.resize((size, size), Image.NEAREST)).astype(np.int16)
    return np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)


@dataclass
class Logged:
    checkpoint: Path
    tiles: list[Path]  # a LARGE-px LZW TIFF and a 256-px one
    models: dict[str, Path]  # name -> the logged model, downloaded
    submitted: dict = field(default_factory=dict)  # submit's maps by overrides, computed once


def _log(checkpoint: dict, options: dict) -> Path:
    import mlflow

    from naic_seg.mlflow_model import log_model

    with mlflow.start_run():
        info = log_model([checkpoint], {"val_mIoU": 0.5}, options)
    return Path(mlflow.artifacts.download_artifacts(info.model_uri))


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Logged:
    """Two models logged from one tiny checkpoint: conf/base's model_export (``plain``), and the same with
    ``output_values: index`` and flip TTA (``index_flip``); engine torch, no ONNX (the engines have their
    own tests; equal maps need the same engine on both sides)."""
    import mlflow

    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    ckpt = make_checkpoint(
        MODEL,
        build_model(**MODEL).state_dict(),
        1,
        {},
        TABLE.as_config(),
        preprocess={"input_size": INPUT, "tile_size": 256},
    )
    save_checkpoint(ckpt, root / "stage2.pt")
    tiles = [
        write_tile(root, "test", tid, image=_fields(size, seed), with_label=False)[0]
        for tid, size, seed in ((1, LARGE, 0), (2, 256, 1))
    ]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        mlflow.set_experiment("served")
        export = _conf_block("model_export") | {"engine": "torch", "onnx": False}
        models = {
            "plain": _log(ckpt, export),
            "index_flip": _log(ckpt, export | {"output_values": "index", "tta": "flip"}),
        }
    finally:
        mlflow.set_tracking_uri(previous)
    return Logged(root / "stage2.pt", tiles, models)


def _submit_maps(logged: Logged, **overrides) -> list[np.ndarray]:
    """uint8 class indices for each tile from the submit node, with conf/base's submit block."""
    key = tuple(sorted(overrides.items()))
    if key not in logged.submitted:
        options = _conf_block("submit") | {"workers": 0, "engine": "torch", "device": _device()} | overrides
        stage1, stage2 = CheckpointFile("stage1", None), CheckpointFile("stage2", logged.checkpoint)
        manifest = [{"filename": str(t)} for t in logged.tiles]
        records = predict_test_tiles(manifest, stage1, stage2, TABLE.as_config(), options)
        logged.submitted[key] = [decode_png(png) for _, png in records]
    return logged.submitted[key]


def _requests(tiles: list[Path]) -> list[str]:
    """The LARGE image as a base64 PNG, the same tile's raw TIFF bytes, and the small tile's TIFF."""
    with Image.open(tiles[0]) as im:
        png = encode_image(np.asarray(im))
    return [png] + [base64.b64encode(t.read_bytes()).decode("ascii") for t in tiles]


def _answers(rows) -> list[np.ndarray]:
    maps = [decode_image(row["class_map"]) for row in rows]
    for m, row in zip(maps, rows, strict=True):
        assert m.shape == (row["height"], row["width"])
    return maps


def test_a_large_image_sent_to_the_pyfunc_model_gets_submits_auto_map_pixel_for_pixel(logged):
    import mlflow

    options = json.loads((logged.models["plain"] / "artifacts" / "options.json").read_text())
    assert set(options) == {*SERVED_KEYS, "output_values"}
    assert options["mode"] == "auto" and options["slide_above"] == 1024 and options["window"] == 256
    model = mlflow.pyfunc.load_model(str(logged.models["plain"]))
    large_png, large_tiff, small_tiff = _answers(
        model.predict(pd.DataFrame({"image": _requests(logged.tiles)})).to_dict("records")
    )
    submit_large, submit_small = (TABLE.to_value(m) for m in _submit_maps(logged))
    assert large_png.dtype == np.uint16 and large_png.shape == (LARGE, LARGE)
    np.testing.assert_array_equal(large_png, submit_large)
    np.testing.assert_array_equal(large_tiff, submit_large)  # raw TIFF bytes: the same image
    np.testing.assert_array_equal(small_tiff, submit_small)  # below slide_above: resized, as submit does
    assert len(np.unique(submit_large)) >= 3  # a map with edges, not one class everywhere

    # The windows matter: resizing the whole image (what the served model did before) gives another map.
    resized = _submit_maps(logged, mode="resize")[0]
    assert (TABLE.to_index(large_png) != resized).mean() > 0.05


def test_output_values_index_and_flip_tta_give_submits_flip_indices(logged):
    import mlflow

    model = mlflow.pyfunc.load_model(str(logged.models["index_flip"]))
    assert model.metadata.metadata["output_values"] == "index"
    images = [_requests(logged.tiles)[i] for i in (0, 2)]  # the large PNG and the small TIFF
    large, small = _answers(model.predict(pd.DataFrame({"image": images})).to_dict("records"))
    flip_large, flip_small = _submit_maps(logged, tta="flip")
    assert large.dtype == np.uint8 and large.max() < TABLE.num_classes
    np.testing.assert_array_equal(large, flip_large)
    np.testing.assert_array_equal(small, flip_small)
    assert (large != _submit_maps(logged)[0]).any()  # the flips were applied


def test_a_model_logged_under_the_old_class_name_with_old_options_still_loads_and_predicts(
    logged, tmp_path, monkeypatch
):
    """Versions registered before the rename pickled ``naic_seg.mlflow_model.SegmentationModel`` and wrote
    options.json with tta and output_values only; they load, and predict as they did (each image resized)."""
    import mlflow

    import naic_seg.mlflow_model as mlflow_model

    class OldName(mlflow_model.NaicSegPyfunc):
        pass

    OldName.__name__ = OldName.__qualname__ = "SegmentationModel"
    OldName.__module__ = "naic_seg.mlflow_model"
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"tta": "none", "output_values": "naic"}))
    artifacts = {"options": str(options), "checkpoint_0": str(logged.checkpoint)}
    with monkeypatch.context() as patch:  # the module as the old code had it while the model is saved
        patch.setattr(mlflow_model, "SegmentationModel", OldName)
        mlflow.pyfunc.save_model(  # pip_requirements given: inferring them would load the model in a child
            tmp_path / "old", python_model=OldName(), artifacts=artifacts, pip_requirements=["torch"]
        )
    (pickled,) = (tmp_path / "old").glob("python_model.pkl")
    assert b"SegmentationModel" in pickled.read_bytes() and b"NaicSegPyfunc" not in pickled.read_bytes()

    model = mlflow.pyfunc.load_model(str(tmp_path / "old"))
    served = model.unwrap_python_model()
    assert type(served) is mlflow_model.NaicSegPyfunc  # the old name resolves to the renamed class
    assert (served.predictor.cfg.mode, served.predictor.engine.name) == ("resize", "torch")
    rows = model.predict(pd.DataFrame({"image": _requests(logged.tiles)[:1]})).to_dict("records")
    (answer,) = _answers(rows)
    # what the old predict computed: the image resized to the input size, its logits back, on torch
    image = _fields(LARGE, 0)
    cfg = PredictConfig(workers=0, batch_size=1, device=_device(), engine="torch")
    predictor = Predictor.from_checkpoints([load_checkpoint(logged.checkpoint)], cfg, TABLE)
    small = resize_image(image, INPUT).transpose(2, 0, 1)
    logits = predictor.window_logits(torch.from_numpy(np.ascontiguousarray(small))[None])
    old = class_map(logits, image.shape[:2])[0].to(torch.uint8).numpy()
    np.testing.assert_array_equal(answer, TABLE.to_value(old))


@pytest.mark.slow
def test_mlflow_models_serve_answers_large_images_and_raw_tiffs_with_submits_maps(logged):
    with _model_server(str(logged.models["plain"])) as port:
        large_png, large_tiff, small_tiff = _answers(_post(port, _requests(logged.tiles)))
        (again,) = _answers(_post(port, _requests(logged.tiles)[:1]))  # the same process answers again
    submit_large, submit_small = (TABLE.to_value(m) for m in _submit_maps(logged))
    np.testing.assert_array_equal(large_png, submit_large)
    np.testing.assert_array_equal(large_tiff, submit_large)
    np.testing.assert_array_equal(small_tiff, submit_small)
    np.testing.assert_array_equal(again, submit_large)
