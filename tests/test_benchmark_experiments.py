"""The rs8 sweep's rows live in benchmarks/experiments/rs8_sweep.yml: they expand to exactly the overrides the
Python definitions gave before the move (the expected values below were printed by that code), a row's
list and mapping values reach the run's parameters, and a broken file is refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from benchmarks import rs8_sweep
from benchmarks._common import make_project
from benchmarks._experiments import load_sweep

S1, S2 = "train_stage1", "train_stage2"
R18 = {
    f"{S1}.model.encoder": "resnet18",
    f"{S1}.model.pretrained": None,
    f"{S1}.train.input_size": 128,
    f"{S2}.train.input_size": 128,
    f"{S1}.train.augment.hflip": False,
    f"{S2}.train.augment.hflip": False,
    f"{S1}.train.augment.vflip": False,
    f"{S2}.train.augment.vflip": False,
    f"{S2}.model.output_stride": 8,
}
LITE0_192 = {
    **R18,
    f"{S1}.model.encoder": "tu-tf_efficientnet_lite0",
    f"{S1}.model.pretrained": "imagenet",
    f"{S1}.train.input_size": 192,
    f"{S2}.train.input_size": 192,
    "@iterations_factor": 0.4444444444444444,
}
FLIPS = {f"{s}.train.augment.{f}": True for s in (S1, S2) for f in ("hflip", "vflip")}

# (description, overrides, stage1_only) of each row as the code before the YAML move defined it.
BEFORE = {
    "recipe": ("conf/rs8 as it stands (PSPNet on ImageNet EfficientNet-Lite0, stride 16)", {}, False),
    "deeplabv3plus": (
        "r18-random with DeepLabV3+ instead of PSPNet",
        {**R18, "@full_iterations": (3000, 360), f"{S1}.model.arch": "deeplabv3plus"},
        False,
    ),
    "lite0-192": (
        "ImageNet EfficientNet-Lite0, 192 px, stride 16 only, iterations x (128/192)^2",
        LITE0_192,
        True,
    ),
    "lite0-192-flips": ("lite0-192 with random horizontal + vertical flips", {**LITE0_192, **FLIPS}, True),
    "stage1-only-lite": (
        "lite0-candidate-2stage at stride 16 only, stage 2's time as extra iterations"
        " at Lite0's stage-2 cost",
        {
            **R18,
            f"{S1}.model.encoder": "tu-tf_efficientnet_lite0",
            f"{S1}.model.pretrained": "imagenet",
            f"{S1}.train.input_size": 192,
            f"{S2}.train.input_size": 192,
            **FLIPS,
            f"{S1}.train.batch_size": 16,
            f"{S2}.train.batch_size": 16,
            "@full_iterations": (420, 34),
            "@stage2_cost": 3.8,
        },
        True,
    ),
    "lite0-192-ohem-split2018": (
        "lite0-192-ohem with data_prep seed 2018: a random tile hold-out with 7 tiles of the class other",
        {
            **LITE0_192,
            f"{S1}.train.ohem_thresh": 0.7,
            f"{S2}.train.ohem_thresh": 0.7,
            "data_prep.seed": 2018,
            "data_prep.holdout_groups": None,
        },
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_yaml_rows_expand_to_the_overrides_the_code_defined(name: str) -> None:
    description, overrides, stage1_only = rs8_sweep.CONFIGS[name]
    assert (description, overrides, stage1_only) == BEFORE[name]
    assert list(overrides) == list(BEFORE[name][1]), "the keys keep their order (--list prints them so)"


def test_the_sweep_keeps_its_rows_in_file_order_and_today_s_commands() -> None:
    names = list(rs8_sweep.CONFIGS)
    assert names[:3] == ["recipe", "r18-random", "deeplabv3plus"] and len(names) == len(set(names))
    args, params = rs8_sweep.config_params("lite0-192-flips", "short", Path("/data/rs8"), True)
    assert args[:4] == ["--env", "rs8", "--pipelines", "data_prep,train_stage1"]
    assert params[f"{S1}.train.iterations"] == round((400 + 2.2 * 100) * (128 / 192) ** 2) == 276
    assert "train_stage1.train.augment.hflip=true" in args[-1] and "@" not in args[-1]


def test_list_and_mapping_overrides_reach_the_run_through_its_copy_of_conf_rs8(tmp_path: Path) -> None:
    """kedro --params splits on commas, so [0.75, 1.5] cannot travel there: the sweep writes it into the
    run's copy of conf/rs8, where Kedro's soft merge keeps every other key of the block."""
    _, params = rs8_sweep.config_params("recipe-photometric", "short", Path("/data/rs8"), True)
    _, scale = rs8_sweep.config_params("recipe-scale", "short", Path("/data/rs8"), True)
    in_files = rs8_sweep.file_overrides({**params, **scale, "data_prep.holdout_fraction": [0.1]})
    args, _ = rs8_sweep.config_params("recipe-scale", "short", Path("/data/rs8"), True)
    assert "augment.scale" not in args[-1] and "train_stage1.train.batch_size=8" in args[-1]

    project = make_project(tmp_path / "project")
    rs8_sweep.write_file_overrides(project, in_files)
    loader = OmegaConfigLoader(
        str(project / "conf"), base_env="base", default_run_env="rs8", merge_strategy={"parameters": "soft"}
    )
    got = loader["parameters"]
    augment = got[S1]["train"]["augment"]
    assert augment["scale"] == [0.75, 1.5] and augment["hflip"] is True and augment["vflip"] is True
    assert augment["photometric"] == {
        "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "gamma": [0.8, 1.25],
    }  # fmt: skip
    assert got[S2]["train"]["augment"]["scale"] == [0.75, 1.5]
    assert got[S1]["train"]["input_size"] == 192 and got[S1]["model"]["encoder"] == "tu-tf_efficientnet_lite0"
    assert got["data_prep"]["holdout_fraction"] == [0.1]  # a block conf/rs8 already holds


def test_issue_22_rows_state_their_time_matching() -> None:
    rows = rs8_sweep.CONFIGS
    assert rows["recipe-ema"].overrides == {f"{S1}.train.ema.decay": 0.999}
    assert rows["recipe-input320"].overrides["@iterations_factor"] == pytest.approx((192 / 320) ** 2)
    assert rows["recipe-lite2"].overrides["@iterations_factor"] == round(360.3 / 508.5, 3)
    _, params = rs8_sweep.config_params("recipe-stride8", "full", Path("/data/rs8"))
    assert (params[f"{S1}.train.iterations"], params[f"{S2}.train.iterations"]) == (610, 50)
    assert params[f"{S2}.model.output_stride"] == 8 and params[f"{S2}.train.lr"] == 0.001


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("configs:\n  a:\n    description: x\n    extends: b\n", "'a' extends 'b', which is neither"),
        ("configs:\n  a:\n    description: x\n    extends: a\n", "a -> a: a row cannot extend itself"),
        ("configs:\n  a:\n    description: x\n    overides: {}\n", "'a' has unknown key(s) ['overides']"),
        ("configs:\n  a:\n    overrides: {}\n", "row 'a' has no description"),
        ("bases:\n  a: {}\nconfigs:\n  a:\n    description: x\n", "['a'] name both a base and a row"),
    ],
)
def test_a_broken_sweep_file_is_refused_naming_the_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sweep.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_sweep(path)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "suffix"),
    [
        (True, True, ", AMX + AVX-512-BF16, native bf16"),
        (False, True, ", AVX-512-BF16, native bf16"),
        (False, False, ", no native bf16"),
    ],
)
def test_every_figure_names_the_cpu_s_bf16_units(
    monkeypatch, amx: bool, avx512_bf16: bool, suffix: str
) -> None:
    """The Xeon (AMX) and an EPYC with AVX-512-BF16 train slightly different models at other speeds, so
    the machine line of every benchmark JSON tells them apart, and both from a CPU that emulates bf16."""
    import torch

    from benchmarks._common import cpu_model

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    name = cpu_model()
    assert name.endswith(suffix)
    assert name[: -len(suffix)] and name.count("native bf16") == 1
