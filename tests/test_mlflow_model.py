"""The trained model outside the project: pyfunc in Python, the registry, ``mlflow models serve``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from naic_seg.core.checkpoint import load_checkpoint
from naic_seg.core.labels import ClassTable
from naic_seg.core.predict import PredictConfig, predict_manifest
from naic_seg.mlflow_model import decode_image, encode_image

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
    from naic_seg.mlflow_model import SegmentationModel

    artifacts = {p.stem: str(p) for p in (local / "artifacts").iterdir()}
    artifacts["onnx"] = artifacts.pop("model")
    options = json.loads(Path(artifacts["options"]).read_text()) | {"engine": engine} | extra
    artifacts["options"] = str(tmp_path / f"options_{engine}.json")
    Path(artifacts["options"]).write_text(json.dumps(options))
    model = SegmentationModel()
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


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_posted_tile_with_its_class_map(demo_run):
    client = _client(demo_run)
    (version,) = client.search_model_versions(f"name='{NAME}'")
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",  # serve starts uvicorn by name
        "MLFLOW_TRACKING_URI": f"sqlite:///{demo_run / 'mlflow.db'}",
    }
    cmd = [f"{bin_dir}/mlflow", "models", "serve", "-m", f"models:/{NAME}/{version.version}"]
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
        tile = _tile(demo_run, rs8_env=True)
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[_b64(tile)]]}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            answer = json.loads(r.read())
        (row,) = answer["predictions"]
        class_map = decode_image(row["class_map"])
        with Image.open(tile) as im:
            assert class_map.shape == (im.height, im.width) == (row["height"], row["width"])
        assert class_map.dtype == np.uint16 and set(np.unique(class_map)) <= set(range(100, 900, 100))
        # The served model's engine is auto: chosen by timing inside the server, so it is either one.
        candidates = [_expected(demo_run, tile, engine) for engine in ("torch", "onnxruntime")]
        assert any(np.array_equal(class_map, c) for c in candidates)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
