"""Benchmark the served MLflow model against the project's own predict path, on the same 256-px tiles.

A random-weight checkpoint (default PSPNet ResNet-18, model input 256 px: the architecture and size decide
the cost, not the weights) is logged with :func:`naic_seg.mlflow_model.log_model` into a throw-away sqlite
store, then timed three ways on the same tiles (rs8 TIFFs when the tree is there, else synthetic PNGs):

* ``served``: ``mlflow models serve --env-manager local`` on the loopback; one request with one tile, and one
  request with a batch of 16 (``dataframe_split``, base64 TIFF/PNG bytes in, base64 class-map PNGs out);
* ``pyfunc``: ``mlflow.pyfunc.load_model(...).predict`` in this process (the same decode/encode, no HTTP);
* ``predictor``: :meth:`Predictor.window_logits` + arg-max on the decoded uint8 tensors (no base64, no PNG,
  torch's resize instead of PIL's).

Each timing is the median of ``--repeats`` runs after one warm-up. Also the logged model's size on disk
(checkpoint, code, environment files). One JSON document goes to stdout; progress to stderr.

    .venv/bin/python -m benchmarks.bench_serving --repeats 5 > bench_serving.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks._common import add_rs8_argument, cpu_model, loadavg


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _tiles(rs8: Path, n: int) -> tuple[list[np.ndarray], list[str]]:
    files = (
        sorted((rs8 / "train" / "images").glob("*.tif"))[:n] if (rs8 / "train" / "images").is_dir() else []
    )
    if len(files) == n:
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], [
            base64.b64encode(f.read_bytes()).decode() for f in files
        ]
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n)]
    texts = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        texts.append(base64.b64encode(buf.getvalue()).decode())
    return arrays, texts


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _size(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    ckpt = sum(p.stat().st_size for p in files if p.suffix == ".pt")
    code = sum(p.stat().st_size for p in files if "code" in p.relative_to(path).parts)
    return {
        "total_mb": round(total / 1e6, 2),
        "checkpoint_mb": round(ckpt / 1e6, 2),
        "code_mb": round(code / 1e6, 2),
    }


def _serve(model_uri: str, tracking: str, log: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["MLFLOW_TRACKING_URI"] = tracking
    cmd = ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", "127.0.0.1"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=out, stderr=out, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server, port
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGTERM)
    raise RuntimeError(f"server did not answer /ping: {log.read_text()[-2000:]}")


def _post(port: int, texts: list[str]) -> list[dict]:
    body = {"dataframe_split": {"columns": ["image"], "data": [[t] for t in texts]}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["predictions"]


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported
    import mlflow
    import pandas as pd

    from naic_seg.core.checkpoint import make_checkpoint
    from naic_seg.core.labels import ClassTable
    from naic_seg.core.models import build_model
    from naic_seg.core.predict import PredictConfig, Predictor
    from naic_seg.mlflow_model import log_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rs8_argument(ap)
    ap.add_argument("--arch", default="pspnet")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--onnx", action="store_true", help="log the ONNX export with the model (counts in its size)"
    )
    args = ap.parse_args(argv)

    classes = ClassTable.naic()
    torch.manual_seed(0)
    config = {
        "arch": args.arch,
        "encoder": args.encoder,
        "num_classes": classes.num_classes,
        "output_stride": 16,
    }
    model = build_model(**config, pretrained=None)
    preprocess = {"input_size": args.input_size, "tile_size": 256}
    ckpt = make_checkpoint(config, model.state_dict(), 0, None, classes.as_config(), "stage2", preprocess)
    arrays, texts = _tiles(args.rs8, args.batch)
    result: dict = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "model": {**config, "input_size": args.input_size, "weights": "random"},
        "tiles": {
            "n": len(arrays),
            "side": arrays[0].shape[0],
            "source": "rs8" if args.rs8.is_dir() else "synthetic",
        },
        "repeats": args.repeats,
        "loadavg_start": loadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tracking = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        mlflow.set_tracking_uri(tracking)
        mlflow.set_experiment("bench_serving")
        with mlflow.start_run():
            info = log_model([ckpt], {}, {"output_values": "naic", "tta": "none", "onnx": args.onnx})
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(Path(tmp) / "dl")))
        result["logged_model_size"] = _size(local)

        _err("predictor")
        predictor = Predictor.from_checkpoints(
            [ckpt], PredictConfig(workers=0, batch_size=args.batch), classes
        )
        one = torch.from_numpy(arrays[0]).permute(2, 0, 1)[None].contiguous()
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        times = {
            "predictor": {
                "one_s": _median(lambda: predictor.window_logits(one).max(1).indices, args.repeats),
                "batch_s": _median(lambda: predictor.window_logits(batch).max(1).indices, args.repeats),
            }
        }
        _err("pyfunc")
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
        one_df, batch_df = pd.DataFrame({"image": texts[:1]}), pd.DataFrame({"image": texts})
        times["pyfunc"] = {
            "one_s": _median(lambda: pyfunc.predict(one_df), args.repeats),
            "batch_s": _median(lambda: pyfunc.predict(batch_df), args.repeats),
        }
        _err("served")
        server, port = _serve(info.model_uri, tracking, Path(tmp) / "serve.log")
        try:
            times["served"] = {
                "one_s": _median(lambda: _post(port, texts[:1]), args.repeats),
                "batch_s": _median(lambda: _post(port, texts), args.repeats),
            }
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    for row in times.values():
        row["one_ms"] = round(1000 * row.pop("one_s"), 1)
        batch_s = row.pop("batch_s")
        row[f"batch{len(arrays)}_ms"] = round(1000 * batch_s, 1)
        row["tiles_per_s"] = round(len(arrays) / batch_s, 2)
    result["timings"] = times
    result["loadavg_end"] = loadavg()
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
