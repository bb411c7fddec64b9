"""The prediction engines: torch and ONNX Runtime give the same classes, the ONNX cache, auto's choice."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from naic_seg.core import engines, export
from naic_seg.core.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from naic_seg.core.data import resize_image
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.predict import PredictConfig, Predictor, predict_tiles
from naic_seg.core.scenes import SceneOptions, map_scene
from tests.core.test_export import tiny_checkpoint
from tests.core.test_scenes import random_scene, write_scene

TABLE = ClassTable.naic()
TIE = 1e-3  # classes may differ only where the top two logits are this close


def saved(tmp_path: Path, ckpt: dict, name: str = "stage2.pt") -> dict:
    """The checkpoint written and read back, so it has a file (and the cache a folder beside it)."""
    save_checkpoint(ckpt, tmp_path / name)
    return load_checkpoint(tmp_path / name)


def predictor(ckpt: dict, engine: str, **cfg) -> Predictor:
    return Predictor.from_checkpoints([ckpt], PredictConfig(engine=engine, amp="none", **cfg), TABLE)


def disagreement(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(pixels whose classes differ, how many of those have top two logits in ``a`` more than TIE apart)."""
    differ = a.argmax(1) != b.argmax(1)
    top2 = a.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > TIE
    return int(differ.sum()), int((differ & clear).sum())


def test_both_engines_give_the_same_logits_through_tta_and_sliding_windows(tmp_path):
    ckpt = saved(tmp_path, tiny_checkpoint(64))
    x = torch.randint(0, 256, (3, 3, 160, 96), dtype=torch.uint8)
    results = {}
    for engine in ("torch", "onnxruntime"):
        p = predictor(ckpt, engine, tta="flip_scale", tta_scales=(0.75, 1.0))
        assert p.engine.name == engine
        prepared = p.prepare(x)
        results[engine] = (p.resized_logits(prepared), p.slide(prepared[:1], 64, 0.5))
    for a, b in zip(results["torch"], results["onnxruntime"], strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) < 1e-3
        assert disagreement(a, b)[1] == 0
    # one graph per size the views fed: 64 and 48 (0.75 x 64), batch axis dynamic
    assert sorted(p.name.split(".")[1] for p in (tmp_path / "onnx").glob("*.onnx")) == ["48x48", "64x64"]


def test_the_cached_graph_is_reused_and_rebuilt_when_weights_or_settings_change(tmp_path, monkeypatch):
    calls = []
    real_export = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: calls.append(a[1]) or real_export(*a, **k))
    ckpt = saved(tmp_path, tiny_checkpoint(64))
    first = export.cached_onnx(ckpt)
    assert export.cached_onnx(load_checkpoint(tmp_path / "stage2.pt")) == first
    assert len(calls) == 1 and first.parent == tmp_path / "onnx"

    changed = dict(ckpt, state_dict=dict(ckpt["state_dict"]))
    key = next(k for k in changed["state_dict"] if k.endswith("weight"))
    changed["state_dict"][key] = changed["state_dict"][key] + 1e-3
    second = export.cached_onnx(changed)
    assert second != first and len(calls) == 2
    assert not first.exists(), "the graph of the old weights is replaced"

    monkeypatch.setattr(export, "OPSET", 19)
    third = export.cached_onnx(changed)
    assert third not in (first, second) and len(calls) == 3
    assert [p.name for p in (tmp_path / "onnx").glob("*.onnx")] == [third.name]


def fake_rates(monkeypatch, rates: dict[str, float]) -> None:
    monkeypatch.setattr(engines, "measure_rate", lambda engine, shape: rates[engine.name])


@pytest.mark.parametrize("faster", ["torch", "onnxruntime"])
def test_auto_picks_the_faster_engine_and_says_why(tmp_path, monkeypatch, caplog, faster):
    ckpt = saved(tmp_path, tiny_checkpoint(64))
    fake_rates(monkeypatch, {"torch": 100.0 if faster == "torch" else 40.0, "onnxruntime": 70.0})
    with caplog.at_level(logging.INFO, logger="naic_seg.core.predict"):
        p = predictor(ckpt, "auto", batch_size=4)
    assert p.engine.name == faster
    line = next(r.getMessage() for r in caplog.records if "Prediction engine" in r.getMessage())
    assert f"Prediction engine: {faster} float32 (auto: " in line
    assert "img/s vs " in line and "batches of (4, 3, 64, 64)" in line


def test_auto_measures_real_rates_on_the_batch_shape(tmp_path, monkeypatch):
    shapes = []
    real = engines.measure_rate
    monkeypatch.setattr(engines, "measure_rate", lambda e, s: shapes.append((e.name, tuple(s))) or real(e, s))
    ckpt = saved(tmp_path, tiny_checkpoint(64))
    p = predictor(ckpt, "auto", batch_size=2)
    assert shapes == [("torch", (2, 3, 64, 64)), ("onnxruntime", (2, 3, 64, 64))]
    assert p.engine.name in ("torch", "onnxruntime") and "img/s" in p.engine.why


@pytest.mark.parametrize("asked", ["auto", "onnxruntime"])
def test_without_onnxruntime_prediction_falls_back_to_torch_and_says_so(tmp_path, monkeypatch, caplog, asked):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    ckpt = saved(tmp_path, tiny_checkpoint(64))
    with caplog.at_level(logging.INFO, logger="naic_seg.core.engines"):
        p = predictor(ckpt, asked)
    assert p.engine.name == "torch"
    assert any(
        f"engine: {asked} asked, but ONNX Runtime cannot run here" in r.getMessage() for r in caplog.records
    )
    assert p.logits(p.prepare(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))).shape == (1, 8, 64, 64)


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of auto, torch, onnxruntime"):
        PredictConfig(engine="tensorrt")


def test_explicit_onnxruntime_exports_before_any_work_and_a_misfit_is_named(tmp_path):
    ckpt = saved(tmp_path, tiny_checkpoint(64))
    predictor(ckpt, "onnxruntime")
    assert len(list((tmp_path / "onnx").glob("*.64x64.*.onnx"))) == 1
    misfit = dict(ckpt, model=dict(ckpt["model"], encoder="resnet34"))
    with pytest.raises(ValueError, match="does not fit its model"):
        predictor(misfit, "onnxruntime")


def test_scene_maps_from_both_engines_agree(tmp_path):
    ckpt = saved(tmp_path, tiny_checkpoint(64))
    scene = write_scene(tmp_path / "scene.tif", random_scene(300, 260, seed=3))
    for engine in ("torch", "onnxruntime"):
        p = predictor(ckpt, engine)
        opts = SceneOptions(window=96, overlap=0.25, batch_size=4)
        map_scene(scene, tmp_path / f"{engine}.tif", p.window_logits, TABLE, opts)
    with rasterio.open(tmp_path / "torch.tif") as a, rasterio.open(tmp_path / "onnxruntime.tif") as b:
        same = a.read(1) == b.read(1)
    assert same.mean() >= 0.999, f"{(~same).sum()} of {same.size} pixels differ"


@pytest.mark.slow
def test_engines_agree_on_the_rs8_test_tiles(tmp_path, rs8_root):
    """The rs8 recipe's network (PSPNet, ImageNet EfficientNet-Lite0 encoder, 192 px) on every rs8 test tile:
    classes identical except where the top two logits are within 1e-3, and at least 99.9 % identical."""
    torch.manual_seed(0)
    config = {"arch": "pspnet", "encoder": "tu-tf_efficientnet_lite0", "num_classes": 8, "output_stride": 16}
    model = build_model(**config, pretrained="imagenet")
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    pre = {"input_size": 192, "tile_size": 256, "normalization": norm}
    ckpt = saved(tmp_path, make_checkpoint(config, model.state_dict(), 1, None, TABLE.as_config(), "s", pre))
    files = sorted((rs8_root / "test" / "images").glob("*.tif"))
    images = np.stack([resize_image(np.asarray(Image.open(f).convert("RGB")), 192) for f in files])
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    out = {}
    for engine in ("torch", "onnxruntime"):
        p = predictor(ckpt, engine)
        out[engine] = torch.cat([p.window_logits(batch) for batch in x.split(16)])
    differ, clear = disagreement(out["torch"], out["onnxruntime"])
    pixels = out["torch"].shape[0] * 192 * 192
    print(f"rs8 test tiles: {differ} of {pixels} pixels differ between engines, {clear} beyond a {TIE} tie")
    assert clear == 0
    assert differ / pixels <= 1e-3


def test_submit_stream_is_the_same_on_both_engines(tmp_path):
    from tests.conftest import write_tile

    manifest = []
    for i in range(5):
        path, _ = write_tile(tmp_path / "tiles", "test", i, size=80 + 16 * i, seed=i, with_label=False)
        manifest.append({"filename": str(path)})
    ckpt = saved(tmp_path, tiny_checkpoint(64))
    maps = {}
    for engine in ("torch", "onnxruntime"):
        p = predictor(ckpt, engine, workers=0, batch_size=2, mode="auto", slide_above=100, window=64)
        maps[engine] = dict(predict_tiles(manifest, p))
    assert maps["torch"].keys() == maps["onnxruntime"].keys()
    for tid, a in maps["torch"].items():
        assert a.shape == maps["onnxruntime"][tid].shape
        assert (a == maps["onnxruntime"][tid]).mean() >= 0.999
