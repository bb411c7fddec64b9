"""The training engine on tiny synthetic data: schedule, learning, resume, NaN guard."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from naic_seg.core.checkpoint import CheckpointError
from naic_seg.core.labels import ClassTable
from naic_seg.core.models import build_model
from naic_seg.core.synthetic import write_synthetic_tiles
from naic_seg.core.tiles import TileListing, prepare
from naic_seg.core.training import (
    RESUME_FILE,
    NonFiniteLossError,
    TrainConfig,
    poly_lr,
    resolve_model_config,
    train,
)

PHOTOMETRIC = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "gamma": [0.8, 1.25]}
MODEL = {"arch": "pspnet", "encoder": "resnet18", "output_stride": 16, "num_classes": 8}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = write_synthetic_tiles(
        tmp_path_factory.mktemp("syn") / "tiles", n_train=24, n_test=2, size=64, seed=3
    )

    def listing(sub):
        folder = root / sub
        return TileListing(str(folder), tuple(sorted(str(p) for p in folder.iterdir())))

    table = ClassTable.naic()
    prepared = prepare(
        listing("train/images"),
        listing("train/labels"),
        listing("test/images"),
        table.values,
        table.names,
        holdout=6,
        workers=0,
    )
    return prepared.train_manifest, prepared.val_manifest


def config(tmp_path: Path, **overrides) -> TrainConfig:
    params = dict(
        iterations=12,
        batch_size=4,
        lr=0.01,
        input_size=64,
        workers=0,
        eval_interval=1000,
        log_interval=4,
        checkpoint_interval=4,
        work_dir=str(tmp_path / "work"),
        seed=7,
    )
    params.update(overrides)
    return TrainConfig(**params)


def test_poly_schedule_equals_the_formula():
    assert poly_lr(0, 100, 1e-2, 1e-4) == pytest.approx(1e-2)
    assert poly_lr(50, 100, 1e-2, 1e-4) == pytest.approx((1e-2 - 1e-4) * 0.5**0.9 + 1e-4)
    assert poly_lr(100, 100, 1e-3, 1e-4) == pytest.approx(1e-4)
    assert poly_lr(99, 100, 1e-2, 1e-4) > poly_lr(100, 100, 1e-2, 1e-4)


def test_unknown_training_parameter_is_named():
    with pytest.raises(ValueError, match="unknown key 'itertions' in train_stage1.train; did you mean 'it"):
        TrainConfig.from_params({"iterations": 1, "itertions": 2}, "train_stage1.train")


def test_stage_two_takes_its_model_from_stage_one_at_stride_eight():
    stage1 = {"model": {**MODEL, "aux": True, "dropout": 0.1}}
    config = resolve_model_config({"output_stride": 8}, stage1, ClassTable.naic())
    assert config == {**MODEL, "aux": True, "dropout": 0.1, "output_stride": 8, "pretrained": None}


def test_loss_falls_and_validation_miou_rises_well_above_chance(manifests, tmp_path):
    train_m, val_m = manifests
    logged = []
    model = {**MODEL, "output_stride": 8}  # 8x8 features at 64 px learn the Voronoi edges in 60 steps
    result = train(
        model,
        config(tmp_path, iterations=60, lr=0.05, eval_interval=60, log_interval=10),
        train_m,
        val_m,
        ClassTable.naic(),
        log_fn=lambda m, s: logged.append((s, m)),
    )
    losses = [m["loss"] for _, m in logged if "loss" in m]
    assert losses[-1] < 0.7 * losses[0]
    assert result.metrics["mIoU"] > 0.3  # chance is 1/8; this seed reaches about 0.41
    assert [h["iteration"] for h in result.history] == [60]
    steps = {s for s, m in logged if "val_mIoU" in m}
    assert steps == {60}


def assert_killed_run_resumes_exactly(manifests, tmp_path: Path, caplog, **overrides) -> None:
    """Train 12 iterations straight, and again killed at 10 (last checkpoint 8) then resumed: the same
    weights and scores, bit for bit."""
    train_m, val_m = manifests
    reference = train(MODEL, config(tmp_path / "a", **overrides), train_m, val_m, ClassTable.naic())

    class Killed(Exception):
        pass

    def kill_at_10(metrics, step):
        if step == 10:
            raise Killed

    cfg = config(tmp_path / "b", log_interval=2, **overrides)
    with pytest.raises(Killed):
        train(MODEL, cfg, train_m, val_m, ClassTable.naic(), log_fn=kill_at_10)
    assert torch.load(Path(cfg.work_dir) / RESUME_FILE, weights_only=True)["iteration"] == 8

    lrs = {}
    with caplog.at_level(logging.INFO):
        resumed = train(
            MODEL, cfg, train_m, val_m, ClassTable.naic(), log_fn=lambda m, s: lrs.update({s: m.get("lr")})
        )
    assert "Resuming from iteration 8 of 12" in caplog.text
    assert resumed.resumed_from == 8 and resumed.iteration == 12
    assert lrs[10] == pytest.approx(poly_lr(9, 12, 0.01, 1e-4))
    for key, value in reference.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    assert resumed.metrics == reference.metrics


# bf16 explicitly (not "auto"), so the bf16 path is checked on every CPU, native or emulated.
@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
    manifests, tmp_path, caplog, amp
):
    assert_killed_run_resumes_exactly(manifests, tmp_path, caplog, amp=amp)


def test_killed_run_with_photometric_scale_and_ema_resumes_bit_exact(manifests, tmp_path, caplog):
    """The augmentation draws come from the sample's seed and the weight average is in the resume file."""
    levers = {
        "augment": {"hflip": True, "photometric": PHOTOMETRIC, "scale": [0.75, 1.5]},
        "ema": {"decay": 0.9},
    }
    assert_killed_run_resumes_exactly(manifests, tmp_path, caplog, **levers)


def test_same_seed_gives_the_same_weights(manifests, tmp_path):
    train_m, val_m = manifests
    a = train(MODEL, config(tmp_path / "a", iterations=4), train_m, val_m, ClassTable.naic())
    b = train(MODEL, config(tmp_path / "b", iterations=4), train_m, val_m, ClassTable.naic())
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.metrics == b.metrics


def test_zero_iterations_scores_the_starting_model_and_passes_it_on_unchanged(manifests, tmp_path, caplog):
    """conf/rs8's stage 2 runs with ``iterations: 0`` at stride 16: stage 1's model goes on untrained."""
    train_m, val_m = manifests
    first = train(MODEL, config(tmp_path / "a", iterations=4), train_m, val_m, ClassTable.naic())
    logged = []
    with caplog.at_level(logging.INFO):
        passed = train(
            MODEL,
            config(tmp_path / "b", iterations=0),
            train_m,
            val_m,
            ClassTable.naic(),
            init_state=first.state_dict,
            log_fn=lambda m, s: logged.append((s, m)),
        )
    assert "iterations: 0, so no training" in caplog.text
    assert all(torch.equal(first.state_dict[k], passed.state_dict[k]) for k in first.state_dict)
    assert passed.metrics == first.metrics
    assert passed.iteration == 0 and [h["iteration"] for h in passed.history] == [0]
    assert passed.train_seconds == 0 and passed.images_per_s == 0
    assert logged and all("loss" not in m for _, m in logged)  # scored, never trained
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        config(tmp_path, iterations=-1)


def test_resume_refuses_a_checkpoint_of_other_settings(manifests, tmp_path):
    train_m, val_m = manifests
    train(MODEL, config(tmp_path, iterations=4), train_m, val_m, ClassTable.naic())
    with pytest.raises(CheckpointError, match="lr differ"):
        train(MODEL, config(tmp_path, iterations=4, lr=0.5), train_m, val_m, ClassTable.naic())
    fresh = train(
        MODEL, config(tmp_path, iterations=4, lr=0.5, resume=False), train_m, val_m, ClassTable.naic()
    )
    assert fresh.resumed_from == 0


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(manifests, tmp_path):
    train_m, val_m = manifests
    cfg = config(tmp_path, iterations=50, lr=1e12, min_lr=1e12, checkpoint_interval=1, log_interval=1)
    with pytest.raises(NonFiniteLossError, match="NaN or infinite") as info:
        train(MODEL, cfg, train_m, val_m, ClassTable.naic())
    assert "resume checkpoint" in str(info.value)
    state = torch.load(Path(cfg.work_dir) / RESUME_FILE, weights_only=True)
    assert 1 <= state["iteration"] < 50
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_bf16_trained_checkpoint_is_float32_and_predicts_the_same_classes_without_autocast(
    manifests, tmp_path
):
    from naic_seg.core.models import build_model
    from naic_seg.core.predict import PredictConfig, Predictor
    from naic_seg.core.runtime import Runtime

    train_m, val_m = manifests
    result = train(MODEL, config(tmp_path, iterations=6, amp="bf16"), train_m, val_m, ClassTable.naic())
    assert all(v.dtype in (torch.float32, torch.int64) for v in result.state_dict.values())
    model = build_model(**MODEL).eval()
    model.load_state_dict(result.state_dict, strict=True)
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0)).to(torch.uint8)

    def logits(amp: str) -> torch.Tensor:
        runtime = Runtime.resolve("cpu", amp, False)
        return Predictor([model], PredictConfig(), 64, ClassTable.naic(), runtime).window_logits(images)

    fp32, bf16 = logits("none"), logits("bf16")
    top2 = fp32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.05  # bf16 keeps 8 bits of mantissa: closer calls may flip
    assert clear.float().mean() > 0.5
    assert torch.equal(fp32.argmax(1)[clear], bf16.argmax(1)[clear])


def test_the_saved_and_evaluated_model_is_the_running_average_of_the_weights(
    manifests, tmp_path, monkeypatch
):
    """EMA: computed here from the weights after each step (float64), it equals what the stage returns;
    BatchNorm's running statistics are the trained model's own."""
    from naic_seg.core.training.engine import Stage

    trajectory = []
    step = Stage.step

    def recording_step(self, batch, lr):
        if not trajectory:
            trajectory.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        out = step(self, batch, lr)
        trajectory.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return out

    monkeypatch.setattr(Stage, "step", recording_step)
    train_m, val_m = manifests
    result = train(
        MODEL, config(tmp_path, iterations=6, ema={"decay": 0.8}), train_m, val_m, ClassTable.naic()
    )
    assert len(trajectory) == 7
    params = {name for name, _ in build_model(**MODEL).named_parameters()}
    for key, saved in result.state_dict.items():
        if key not in params:  # a buffer: copied from the trained model
            assert torch.equal(saved, trajectory[-1][key]), key
            continue
        average = trajectory[0][key].double()
        for t in range(1, 7):
            d = min(0.8, (1 + t) / (10 + t))
            average = d * average + (1 - d) * trajectory[t][key].double()
        torch.testing.assert_close(saved.double(), average, rtol=1e-5, atol=1e-6, msg=key)
    moved = [k for k in params if not torch.equal(result.state_dict[k], trajectory[-1][k])]
    assert len(moved) > len(params) // 2  # the average is not the last weights
    plain = train(MODEL, config(tmp_path / "plain", iterations=6), train_m, val_m, ClassTable.naic())
    assert plain.metrics != result.metrics  # the evaluation scored the average


def test_changed_levers_are_refused_on_resume_and_bad_ones_before_training(manifests, tmp_path):
    train_m, val_m = manifests
    on = {"augment": {"photometric": {"brightness": 0.2}}, "ema": {"decay": 0.99}}
    train(MODEL, config(tmp_path, iterations=4, **on), train_m, val_m, ClassTable.naic())
    brighter = {**on, "augment": {"photometric": {"brightness": 0.3}}}
    with pytest.raises(CheckpointError, match="augment differ"):
        train(MODEL, config(tmp_path, iterations=4, **brighter), train_m, val_m, ClassTable.naic())
    with pytest.raises(CheckpointError, match="ema differ"):
        train(MODEL, config(tmp_path, iterations=4, augment=on["augment"]), train_m, val_m, ClassTable.naic())
    with pytest.raises(ValueError, match="ema.decay must be in"):
        config(tmp_path, ema={"decay": 1.0})
    with pytest.raises(ValueError, match="unknown augment option"):
        config(tmp_path, augment={"rotate": 90})
