"""The runtime policy: what ``auto`` resolves to, and that every path shares it."""

from __future__ import annotations

import logging

import pytest
import torch

from naic_seg.core import runtime as rt
from naic_seg.core.runtime import Runtime, cpu_bf16_support, resolve_amp


@pytest.fixture
def cpu_caps(monkeypatch):
    """Simulate the CPU's answer to PyTorch's capability checks."""

    def set_caps(amx: bool, avx512_bf16: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    return set_caps


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected", "why"),
    [
        (True, True, torch.bfloat16, "AMX"),
        (False, True, torch.bfloat16, "AVX-512-BF16"),
        (False, False, None, "emulated"),
    ],
)
def test_auto_is_bf16_only_on_a_cpu_that_runs_it_natively(cpu_caps, amx, avx512_bf16, expected, why):
    cpu_caps(amx, avx512_bf16)
    runtime = Runtime.resolve("cpu", "auto", "auto")
    assert runtime.amp_dtype is expected
    assert runtime.channels_last is (expected is not None)  # NHWC goes with bf16 on oneDNN
    assert why in runtime.describe()


def test_explicit_none_keeps_float32_even_where_bf16_is_fast(cpu_caps):
    cpu_caps(True, True)
    runtime = Runtime.resolve("cpu", "none", "auto")
    assert runtime.amp_dtype is None and runtime.precision == "float32" and not runtime.channels_last


def test_explicit_choices_and_unknown_amp():
    assert resolve_amp("bf16", torch.device("cpu"))[0] is torch.bfloat16
    assert resolve_amp("fp16", torch.device("cpu"))[0] is torch.float16
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("int8", torch.device("cpu"))
    with pytest.raises(ValueError, match="true, false or auto"):
        Runtime.resolve("cpu", "none", "yes")


def test_the_capability_check_reports_this_machine():
    fast, why = cpu_bf16_support()
    assert fast == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert why


def test_training_logs_which_precision_it_chose_and_why(cpu_caps, caplog, monkeypatch):
    from naic_seg.core.training import engine

    cpu_caps(False, True)
    seen = {}

    class StopAfterRuntime(Exception):
        pass

    def stage(model_config, cfg, runtime, init_state, world_size, class_weight=None):
        seen["runtime"] = runtime
        raise StopAfterRuntime

    monkeypatch.setattr(engine, "Stage", stage)
    cfg = engine.TrainConfig(iterations=1, device="cpu", work_dir=None)
    with caplog.at_level(logging.INFO, logger="naic_seg"), pytest.raises(StopAfterRuntime):
        engine.train({}, cfg, [], [], None)
    assert seen["runtime"].amp_dtype is torch.bfloat16
    assert "Training runtime: cpu bf16 autocast, channels-last (CPU has AVX-512-BF16)" in caplog.text


def test_normalizer_puts_batches_on_the_device_in_the_runtime_layout():
    runtime = Runtime(torch.device("cpu"), torch.bfloat16, True, "test")
    x = runtime.normalizer()(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8))
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        y = torch.nn.functional.conv2d(x, torch.ones(4, 3, 1, 1))
    assert y.dtype == torch.bfloat16
    assert rt.Runtime(torch.device("cpu"), None, False).autocast().__class__.__name__ == "nullcontext"
