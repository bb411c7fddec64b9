"""Smoke test of the benchmarks: ``python -m benchmarks.run_all --quick`` on its cheap sections (loader,
train), the rs8 sweep at its smoke budget, and bench_scenes / bench_engines on tiny inputs.

Runs on the rs8 tiles when ``NAIC_SEG_RS8`` points at them, else on a few synthetic tiles written into
``tmp_path``; one torch thread keeps it quick and steady on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from naic_seg.core.synthetic import write_synthetic_tiles

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def module_env(**extra: str) -> dict:
    """The environment for ``python -m benchmarks.<name>`` run from a temporary folder: the repository
    root on PYTHONPATH, as when it runs from the root."""
    paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **extra)


def _positive(x) -> bool:
    return isinstance(x, int | float) and x > 0


def test_run_all_quick_loader_and_train(tmp_path: Path) -> None:
    rs8 = os.environ.get("NAIC_SEG_RS8")
    if rs8 and (Path(rs8) / "train" / "labels").is_dir():
        root = Path(rs8)
    else:
        root = write_synthetic_tiles(tmp_path / "tiles", n_train=8, n_test=4, size=64)
    cmd = [
        sys.executable,
        "-m", "benchmarks.run_all",
        "--quick",
        "--only", "loader", "train",
        "--rs8", str(root),
        "--tmp", str(tmp_path / "work"),
        "--threads", "1",
        "--args", "loader=--workers 0 1",
        "--args", "train=--skip-gpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=module_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)

    assert doc["run_all"]["mode"] == "quick"
    assert doc["run_all"]["sections"] == ["loader", "train"]
    assert "data_prep" not in doc and "submit" not in doc and "models" not in doc

    loader = doc["loader"]
    assert loader["status"] == "ok", loader
    res = loader["result"]
    assert _positive(res["decode_ceiling"]["img_s"]) and _positive(res["dataset_getitem"]["img_s"])
    assert [r["workers"] for r in res["records"]] == [0, 1]
    assert all(_positive(r["img_s"]) and r["images"] > 0 for r in res["records"])
    assert res["host"]["torch_threads"] == 1 and len(res["loadavg_start"]) == 3

    train = doc["train"]
    assert train["status"] == "ok", train
    res = train["result"]
    cpu = res["cpu"]
    e2e = cpu["end_to_end"]
    assert e2e["iterations"] == e2e["warmup_iters"] + e2e["timed_iters"]
    assert len(e2e["window_img_s"]) == e2e["iterations"] // e2e["log_interval"]
    for value in (
        e2e["steady_img_s"],
        e2e["engine_images_per_s"],
        cpu["ceiling"]["before"]["train_img_s"],
        cpu["ceiling"]["after"]["train_img_s"],
        cpu["ratio"],
    ):
        assert _positive(value)
    assert isinstance(cpu["target_met"], bool)
    assert res["gpu"]["gpu"].startswith("skipped")

    assert doc["summary"]["train"]["ratio"] == cpu["ratio"]
    assert set(doc["summary"]["loader"]["img_s_by_workers"]) == {"0", "1"}


def test_rs8_sweep_smoke_budget_runs_the_flow_and_scores_both_stages(tmp_path: Path) -> None:
    """The command behind the README's rs8 table: conf/rs8 as shipped and a stage-1-only configuration."""
    root = write_synthetic_tiles(tmp_path / "tiles", n_train=12, n_test=4, size=64)
    cmd = [
        sys.executable,
        "-m", "benchmarks.rs8_sweep",
        "--rs8", str(root),
        "--budget", "smoke",
        "--configs", "recipe", "stage1-only",
        "--tmp", str(tmp_path),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    env = module_env(OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recipe, stage1_only = json.loads(proc.stdout)["results"]

    # conf/rs8's stage 2 trains nothing (iterations: 0, stride 16): it scores stage 1's model and passes it
    # on, so the stage-2 submission is stage 1's, score for score.
    assert (
        recipe["returncode"] == 0
        and recipe["stage1"]["iterations"] == 4
        and recipe["stage2"]["iterations"] == 0
        and recipe["stage2"]["train_seconds"] == 0
    )
    assert recipe["stage2"]["val_mIoU"] == recipe["stage1"]["val_mIoU"]
    assert recipe["test"]["tiles_scored"] == 4 and 0 <= recipe["test"]["mIoU"] <= 1
    assert recipe["stage1_checkpoint_test"] == recipe["test"]
    assert recipe["train_seconds"] > 0 and recipe["peak_memory_mb"]["tree_pss_sampled"] > 100
    assert recipe["command"].startswith("kedro run --env rs8 --params ")

    # stage 1 alone gets stage 2's iterations at their measured relative cost, and submits its own checkpoint
    from benchmarks import rs8_sweep

    assert stage1_only["stage2"] is None
    assert stage1_only["stage1"]["iterations"] == 4 + round(2 * rs8_sweep.STAGE2_COST) > 6
    assert stage1_only["test"]["tiles_scored"] == 4
    assert "--pipelines data_prep,train_stage1,submit" in stage1_only["command"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "smoke_recipe.json",
        "smoke_stage1-only.json",
    ]
    assert not list(tmp_path.glob("rs8_sweep_*")), "the work dir is removed"

    table = subprocess.run(
        [*cmd[:3], "--table", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, check=True, env=env,
    ).stdout.splitlines()  # fmt: skip
    assert (
        len(table) == 4
        and table[2].startswith("| recipe | smoke | ")
        and table[3].startswith("| stage1-only |")
    )
    assert f"| {recipe['test']['mIoU']:.3f} |" in table[2]


def test_rs8_sweep_holdout_only_never_submits_and_time_matches_input_sizes() -> None:
    """Settings are chosen on the hold-out: --holdout-only runs no submit (the test tiles stay unseen), and
    the pretrained input-size rows get iterations scaled by (128 / size)^2, so they cost about the same."""
    from benchmarks import rs8_sweep

    rs8 = Path("/data/rs8")
    args, params = rs8_sweep.config_params("lite0-256", "short", rs8, True)
    assert args[:4] == ["--env", "rs8", "--pipelines", "data_prep,train_stage1"]
    assert params["train_stage1.train.iterations"] == round((400 + rs8_sweep.STAGE2_COST * 100) / 4)
    assert params["train_stage1.model.encoder"] == "tu-tf_efficientnet_lite0"
    assert params["train_stage1.train.input_size"] == 256 and "submit.checkpoints" not in params
    assert not any(k.startswith("@") for k in params)
    args, _ = rs8_sweep.config_params("recipe", "short", rs8, True)
    assert args[:4] == ["--env", "rs8", "--pipelines", "data_prep,train_stage1,train_stage2"]
    args, _ = rs8_sweep.config_params("recipe", "short", rs8, False)
    assert "--pipelines" not in args  # the whole flow, submit included
    # The Lite stage-1-only row pays stage 2's iterations at Lite0's measured stride-8 cost.
    _, params = rs8_sweep.config_params("stage1-only-lite", "short", rs8, True)
    lite_cost = rs8_sweep.CONFIGS["stage1-only-lite"].overrides["@stage2_cost"]
    assert params["train_stage1.train.iterations"] == round(400 + lite_cost * 100) == 780
    assert not any(k.startswith("@") for k in params)


def test_bench_scenes_measures_memory_at_the_overlap_asked_and_pools_the_placed_scenes(
    tmp_path: Path,
) -> None:
    """The README's scene-mapping figures: the memory rows map at ``--overlap`` (0.5 here: four windows
    over most pixels), and the quality summary pools the placed scenes apart from the mosaic and full_*."""
    import numpy as np
    import rasterio

    from benchmarks import bench_scenes
    from benchmarks._tiles import write_synthetic_scene
    from tests.pipelines.test_map_scenes import random_checkpoint

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i, name in enumerate(("rs8test_a", "rs8test_gid_mosaic", "full_b")):
        scene = write_synthetic_scene(scenes / f"{name}.tif", 128, seed=i)
        with rasterio.open(scene) as src:
            profile = {**src.profile, "count": 1, "dtype": "uint16"}
        codes = (np.arange(128)[None, :] // (16 + 8 * i) % 8 + 1) * 100 + np.zeros((128, 1), dtype=np.int64)
        with rasterio.open(scenes / f"{name}_label.tif", "w", **profile) as dst:
            dst.write(codes.astype(np.uint16)[None])
    ckpt = random_checkpoint(tmp_path / "ckpt.pt", input_size=32, tile_size=64)

    doc = bench_scenes.main(
        ["--quick", "--skip-throughput", "--overlap", "0.5", "--checkpoint", str(ckpt),
         "--scenes", str(scenes), "--tile", "64", "--tmp", str(tmp_path)]
    )  # fmt: skip
    memory = doc["memory"]
    assert memory["overlap"] == 0.5 and all(r["status"] == 0 for r in memory["rows"])
    per_axis = {side: -(-(side - 128) // 64) + 1 for side in (300, 900)}  # window 128, stride 64
    assert [r["windows"] for r in memory["rows"]] == [per_axis[300] ** 2, per_axis[900] ** 2]

    quality = doc["quality"]
    assert quality["overlap"] == 0.5 and quality["window"] == 64
    assert set(quality["scenes"]) == {"rs8test_a", "rs8test_gid_mosaic", "full_b"}
    a = quality["scenes"]["rs8test_a"]
    placed = quality["summary"]["placed"]  # one placed scene: its pooled scores are the scene's
    assert all(placed[k] == a[k] for k in placed)
    assert quality["summary"]["headline"] != placed  # the mosaic counts in the headline, not in placed


def test_bench_engines_measures_every_section_on_a_tiny_model(tmp_path: Path, capsys) -> None:
    """Every section of benchmarks/bench_engines.py on a tiny checkpoint, synthetic tiles and scene."""
    from benchmarks.bench_engines import main
    from naic_seg.core.checkpoint import save_checkpoint
    from tests.core.test_export import tiny_checkpoint
    from tests.core.test_scenes import random_scene, write_scene

    root = write_synthetic_tiles(tmp_path / "tiles", n_train=2, n_test=3, size=64)
    ckpt = tiny_checkpoint(64) | {"preprocess": {"input_size": 64, "tile_size": 64}}
    save_checkpoint(ckpt, tmp_path / "c.pt")
    scene = write_scene(tmp_path / "scene.tif", random_scene(150, 140))
    args = ["--rs8", str(root), "--checkpoint", str(tmp_path / "c.pt"), "--scene", str(scene)]
    doc = main([*args, "--models", "--min-seconds", "0", "--workers", "0", "--submit-repeat", "1"])
    out = capsys.readouterr().out  # log lines may come first: an earlier Kedro session logs to stdout
    assert json.loads(out[out.index('{\n  "cpu"') :]) == doc

    forward = doc["forward"]["checkpoint"]
    assert {"torch float32", "onnxruntime float32", "onnxruntime float32, static batch 1"} <= forward.keys()
    assert all(_positive(row[f"batch{b}"]) for row in forward.values() for b in (1, 8))
    for section in ("submit", "scenes"):
        assert {"torch auto precision", "onnxruntime", "auto"} <= doc[section].keys()
    assert all(_positive(r["tiles_per_s"]) and _positive(r["ratio"]) for r in doc["submit"].values())
    assert all(_positive(r["km2_per_h_at_50cm"]) for r in doc["scenes"].values())
    assert doc["serving"]["onnxruntime"]["engine"].startswith("onnxruntime")
    assert all(_positive(r["one_tile_ms"]) for r in doc["serving"].values())
    # float32 torch is "torch float32" where auto runs bf16, else auto's own precision
    rows = doc["agreement"]
    float32 = rows.get("torch float32 vs onnxruntime", rows["torch auto precision vs onnxruntime"])
    assert float32["differing_beyond_1e-3"] == 0 and float32["max_abs_logit_diff"] < 1e-3
    assert doc["cpu"] and doc["loadavg_end"] is not None


def test_rs8_sweep_folds_runs_each_fold_holdout_only_and_reports_mean_and_sd(tmp_path: Path, monkeypatch):
    """--folds K: K runs of one configuration, run i holding out fold i of data_prep's K folds of groups,
    none of them predicting the test tiles; the record gives each fold's hold-out mIoU, mean and sd."""
    from benchmarks import rs8_sweep

    args, params = rs8_sweep.config_params("recipe", "short", Path("/data/rs8"), True, (5, 3))
    assert args[:4] == ["--env", "rs8", "--pipelines", "data_prep,train_stage1,train_stage2"]
    assert params["data_prep.fold.k"] == 5 and params["data_prep.fold.index"] == 3
    assert "data_prep.fold.k=5,data_prep.fold.index=3" in args[-1]

    calls = []

    def fake_run_config(name, budget, rs8, work, timeout, holdout_only=False, fold=None):
        calls.append((name, holdout_only, fold))
        score = {0: 0.5, 1: 0.6, 2: 0.7}[fold[1]]
        stage = {"val_mIoU": score, "train_seconds": 10.0}
        return {"command": f"kedro run fold {fold[1]}", "returncode": 0, "wall_seconds": 12.0,
                "stage1": stage, "stage2": None, "train_seconds": 10.0}  # fmt: skip

    monkeypatch.setattr(rs8_sweep, "run_config", fake_run_config)
    (tmp_path / "rs8" / "train" / "images").mkdir(parents=True)
    argv = ["--rs8", str(tmp_path / "rs8"), "--folds", "3", "--configs", "lite0-192", "--tmp", str(tmp_path)]
    assert rs8_sweep.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert calls == [("lite0-192", True, (3, i)) for i in range(3)]
    summary = json.loads((tmp_path / "out" / "full_lite0-192_folds3.json").read_text())
    assert summary["holdout_mIoU"] == {"mean": 0.6, "sd": 0.1, "per_fold": [0.5, 0.6, 0.7]}
    assert summary["commands"] == [f"kedro run fold {i}" for i in range(3)] and summary["k"] == 3
    table = rs8_sweep.markdown_table([summary]).splitlines()
    assert table[2] == "| lite0-192 | full | 3 | 0.600 ± 0.100 | 0.500 / 0.600 / 0.700 | - | 30 |"
    # beside the recipe on the same folds: the paired difference, fold by fold
    base = {
        **summary,
        "config": "recipe",
        "holdout_mIoU": {"mean": 0.55, "sd": 0.1, "per_fold": [0.48, 0.55, 0.62]},
    }
    table = rs8_sweep.markdown_table([base, summary]).splitlines()
    assert table[2].endswith("| 0.480 / 0.550 / 0.620 | - | 30 |")
    assert (
        table[3] == "| lite0-192 | full | 3 | 0.600 ± 0.100 | 0.500 / 0.600 / 0.700 | +0.050 ± 0.030 | 30 |"
    )
    other_k = {**base, "k": 5}
    assert rs8_sweep.paired_difference(summary, other_k) is None
    random_tiles = {**summary, "folds": [{"overrides": {"data_prep.holdout_groups": None}}]}
    assert rs8_sweep.paired_difference(random_tiles, base) is None  # other folds: nothing to pair
