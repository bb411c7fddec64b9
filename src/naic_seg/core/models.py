"""Reference segmentation models: PSPNet and DeepLabV3+ on a dilated ResNet, with an FCN auxiliary head.

Plain PyTorch (no Kedro, no MLflow). The encoders come from smp's ``encoders.get_encoder``, which also
dilates them (``output_stride`` 16 dilates stage 4, 8 dilates stages 3 and 4, 32 leaves them as they are).
Dilation only changes strides/dilations/paddings, never parameter names or shapes, so one state dict fits
every output stride.

The encoder returns six feature maps ``[input, stride 2, stage 1 (stride 4), stage 2, stage 3, stage 4]``;
the heads use stage 1 (DeepLabV3+ low-level features), stage 3 (auxiliary head) and stage 4 (decode heads).

In train mode ``forward`` returns ``(logits, aux_logits)`` (``aux_logits`` is ``None`` when ``aux=False``);
in eval mode it returns the logits tensor alone. Both are upsampled bilinearly (``align_corners=False``) to
the input size. The auxiliary loss weight lives in the training code, not here.

Note: the pooling branches (PSP bin 1, ASPP image pooling) normalise a 1x1 map, so BatchNorm in train mode
needs more than one image per (Sync)BatchNorm group, as in mmsegmentation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("pspnet", "deeplabv3plus")
# Only encoders checked to build at strides 8/16/32 with stride-invariant state dicts and to accept ImageNet
# classifier keys (torchvision keys for ``resnet*``, timm keys for ``tu-resnet*d``, the "v1c"-like deep stem).
ENCODERS: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "tu-resnet18d",
    "tu-resnet34d",
    "tu-resnet50d",
    "tu-resnet101d",
)
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)

PSP_BINS: tuple[int, ...] = (1, 2, 3, 6)
PSP_CHANNELS = 512
ASPP_CHANNELS = 256
# Atrous rates at output stride 16, scaled by 16 / output_stride: (12, 24, 36) at 8, (3, 6, 9) at 32.
ASPP_RATES_OS16: tuple[int, ...] = (6, 12, 18)
LOW_LEVEL_CHANNELS = 48
DECODER_CHANNELS = 256
AUX_CHANNELS = 256

# encoder feature indices
LOW_LEVEL_INDEX = 2  # stage 1, stride 4
AUX_INDEX = 4  # stage 3
DEEP_INDEX = 5  # stage 4

_STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
_CLASSIFIER_PREFIXES = ("fc.", "model.fc.", "head.fc.", "classifier.", "head.")


# -------------------------------------------------------------------------------------- validation
def _validate(arch: str, encoder: str, num_classes: int, output_stride: int, dropout: float) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(ARCHITECTURES)}")
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; valid choices: {', '.join(ENCODERS)}")
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"invalid output_stride {output_stride!r}; valid choices: {', '.join(map(str, OUTPUT_STRIDES))}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


# --------------------------------------------------------------------------------- building blocks
class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        padding = (kernel_size // 2) * dilation
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _upsample(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _init_head(module: nn.Module, classifier: nn.Conv2d) -> None:
    """mmseg-style init: Kaiming (fan_out, relu) convs, BN 1/0, classifier N(0, 0.01) with zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(classifier.weight, mean=0.0, std=0.01)
    if classifier.bias is not None:
        nn.init.zeros_(classifier.bias)


class PyramidPoolingModule(nn.Module):
    """Adaptive avg pooling at each bin -> 1x1 conv + BN + ReLU -> bilinear upsample; concatenated with x."""

    def __init__(self, in_channels: int, branch_channels: int, bins: Iterable[int] = PSP_BINS):
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, branch_channels, 1))
            for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [_upsample(stage(x), size) for stage in self.stages], dim=1)


class PSPHead(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, dropout: float = 0.1, channels: int = PSP_CHANNELS
    ):
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels, in_channels // 4, PSP_BINS)
        self.bottleneck = ConvBNReLU(self.ppm.out_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        _init_head(self, self.classifier)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.bottleneck(self.ppm(features[DEEP_INDEX]))
        return self.classifier(self.dropout(x))


class ASPP(nn.Module):
    """1x1 branch + three 3x3 atrous branches + image pooling; concat -> 1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: int, channels: int, rates: Iterable[int]):
        super().__init__()
        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)]
            + [ConvBNReLU(in_channels, channels, 3, r) for r in self.rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.project = ConvBNReLU((len(self.rates) + 2) * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(_upsample(self.image_pool(x), x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        low_level_channels: int,
        num_classes: int,
        output_stride: int = 16,
        dropout: float = 0.1,
    ):
        super().__init__()
        rates = tuple(r * 16 // output_stride for r in ASPP_RATES_OS16)
        self.aspp = ASPP(in_channels, ASPP_CHANNELS, rates)
        self.low_level = ConvBNReLU(low_level_channels, LOW_LEVEL_CHANNELS, 1)
        self.decoder = nn.Sequential(
            ConvBNReLU(ASPP_CHANNELS + LOW_LEVEL_CHANNELS, DECODER_CHANNELS, 3),
            ConvBNReLU(DECODER_CHANNELS, DECODER_CHANNELS, 3),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(DECODER_CHANNELS, num_classes, 1)
        _init_head(self, self.classifier)

    def forward(self, features: list[Tensor]) -> Tensor:
        low = self.low_level(features[LOW_LEVEL_INDEX])
        x = _upsample(self.aspp(features[DEEP_INDEX]), low.shape[-2:])
        x = self.decoder(torch.cat([x, low], dim=1))
        return self.classifier(self.dropout(x))


class FCNHead(nn.Module):
    """Auxiliary head: 3x3 conv + BN + ReLU, Dropout2d, 1x1 classifier."""

    def __init__(
        self, in_channels: int, num_classes: int, dropout: float = 0.1, channels: int = AUX_CHANNELS
    ):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        _init_head(self, self.classifier)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))


# ------------------------------------------------------------------------------------------ models
def _make_encoder(encoder: str, output_stride: int, imagenet: bool) -> nn.Module:
    from segmentation_models_pytorch.encoders import get_encoder

    if imagenet:  # downloads; tu- encoders take a bool, smp ones the weights name
        weights: str | bool | None = True if encoder.startswith("tu-") else "imagenet"
    else:
        weights = None
    return get_encoder(encoder, in_channels=3, depth=5, weights=weights, output_stride=output_stride)


class SegmentationModel(nn.Module):
    """Shared base: encoder + ``decode_head`` (from the subclass) + optional FCN ``aux_head`` (stage 3)."""

    arch: str = ""

    def __init__(
        self,
        encoder: str,
        num_classes: int = 8,
        output_stride: int = 16,
        aux: bool = True,
        dropout: float = 0.1,
        imagenet: bool = False,
    ):
        super().__init__()
        _validate(self.arch, encoder, num_classes, output_stride, dropout)
        self.config: dict = {
            "arch": self.arch,
            "encoder": encoder,
            "num_classes": int(num_classes),
            "output_stride": int(output_stride),
            "aux": bool(aux),
            "dropout": float(dropout),
        }
        self.encoder = _make_encoder(encoder, output_stride, imagenet)
        channels = list(self.encoder.out_channels)
        if len(channels) != 6:
            raise ValueError(
                f"encoder {encoder!r} gives {len(channels)} feature maps, expected 6: {channels}"
            )
        self.encoder_channels: tuple[int, ...] = tuple(channels)
        self.decode_head = self._build_decode_head(channels, num_classes, output_stride, dropout)
        self.aux_head: nn.Module | None = FCNHead(channels[AUX_INDEX], num_classes, dropout) if aux else None

    def _build_decode_head(
        self, channels: list[int], num_classes: int, output_stride: int, dropout: float
    ) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor | None]:
        size = x.shape[-2:]
        features = self.encoder(x)
        logits = _upsample(self.decode_head(features), size)
        if not self.training:
            return logits
        aux_logits = None
        if self.aux_head is not None:
            aux_logits = _upsample(self.aux_head(features[AUX_INDEX]), size)
        return logits, aux_logits


class PSPNet(SegmentationModel):
    arch = "pspnet"

    def _build_decode_head(self, channels, num_classes, output_stride, dropout):
        return PSPHead(channels[DEEP_INDEX], num_classes, dropout)


class DeepLabV3Plus(SegmentationModel):
    arch = "deeplabv3plus"

    def _build_decode_head(self, channels, num_classes, output_stride, dropout):
        return DeepLabV3PlusHead(
            channels[DEEP_INDEX], channels[LOW_LEVEL_INDEX], num_classes, output_stride, dropout
        )


_CLASSES: dict[str, type[SegmentationModel]] = {"pspnet": PSPNet, "deeplabv3plus": DeepLabV3Plus}


def build_model(
    arch: str,
    encoder: str,
    num_classes: int = 8,
    output_stride: int = 16,
    pretrained: str | None = None,
    aux: bool = True,
    dropout: float = 0.1,
) -> SegmentationModel:
    """Build a model. ``pretrained``: None (random), "imagenet" (smp/timm download) or a local file."""
    _validate(arch, encoder, num_classes, output_stride, dropout)
    local: Path | None = None
    if pretrained is not None and pretrained != "imagenet":
        local = Path(pretrained).expanduser()
        if not local.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {str(pretrained)!r}")
    model = _CLASSES[arch](
        encoder,
        num_classes=num_classes,
        output_stride=output_stride,
        aux=aux,
        dropout=dropout,
        imagenet=pretrained == "imagenet",
    )
    if local is not None:
        load_backbone_weights(model, str(local))
    return model


# ---------------------------------------------------------------------------------- weight loading
def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for _ in range(3):  # unwrap {"state_dict": ...} / {"model": ...} (possibly nested)
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (
                obj[k]
                for k in ("state_dict", "model")
                if isinstance(obj.get(k), Mapping) and _has_tensors(obj[k])
            ),
            None,
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _has_tensors(obj):
        raise ValueError(f"{str(path)!r} holds no state dict of tensors (got {type(obj).__name__})")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _has_tensors(obj: Mapping) -> bool:
    return any(isinstance(v, Tensor) for v in obj.values())


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _is_classifier(key: str) -> bool:
    return _strip(key).startswith(_CLASSIFIER_PREFIXES)


def load_backbone_weights(model: SegmentationModel, source: str) -> dict:
    """Load encoder weights from a local ``.pth``/``.pt`` (torch) or ``.safetensors`` file.

    Accepts ImageNet classifier state dicts (torchvision keys for ``resnet*``, timm keys for ``tu-*``, mapped
    under the timm wrapper's ``model.`` prefix), optionally wrapped in ``{"state_dict": ...}`` or
    ``{"model": ...}`` and with keys prefixed ``module.`` / ``backbone.`` / ``encoder.``. Classifier keys
    (``fc.*``) and other keys that are not encoder tensors are returned as ``unexpected``; encoder tensors the
    file lacks as ``missing`` (BatchNorm ``num_batches_tracked`` counters are not reported). Both are logged
    by name with ``logging.warning`` (classifier keys only at INFO level).

    Raises FileNotFoundError (no such file), ValueError (a shape mismatch, naming key and shapes; or no key
    of the file matches the encoder).
    """
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {str(source)!r}")
    state = _read_state_dict(path)

    target = model.encoder.state_dict()
    timm_wrapped = all(k.startswith("model.") for k in target)
    mapped: dict[str, Tensor] = {}
    source_of: dict[str, str] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        stripped = _strip(key)
        candidates = [stripped, f"model.{stripped}"] if timm_wrapped else [stripped]
        name = next((c for c in candidates if c in target), None)
        if name is None or name in mapped:
            unexpected.append(key)
            continue
        mapped[name] = tensor
        source_of[name] = key

    if not mapped:
        raise ValueError(
            f"no key of {str(source)!r} matches encoder {model.config['encoder']!r} "
            f"(file keys start {list(state)[:5]}, encoder keys start {list(target)[:5]})"
        )
    mismatches = [
        f"{source_of[k]!r} -> encoder {k!r}: file {tuple(t.shape)} vs model {tuple(target[k].shape)}"
        for k, t in mapped.items()
        if t.shape != target[k].shape
    ]
    if mismatches:
        raise ValueError(f"shape mismatch loading {str(source)!r}: " + "; ".join(mismatches))

    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    merged = dict(target)
    merged.update(mapped)
    nn.Module.load_state_dict(model.encoder, merged, strict=True)

    classifier = [k for k in unexpected if _is_classifier(k)]
    other = [k for k in unexpected if not _is_classifier(k)]
    if missing:
        logger.warning("backbone weights %s: %d missing encoder keys: %s", source, len(missing), missing)
    if other:
        logger.warning("backbone weights %s: %d unexpected keys (ignored): %s", source, len(other), other)
    if classifier:
        logger.info("backbone weights %s: dropped classifier keys %s", source, classifier)
    logger.info("backbone weights %s: loaded %d encoder tensors", source, len(mapped))
    return {"loaded": sorted(mapped), "missing": missing, "unexpected": unexpected}


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm*d with SyncBatchNorm (for DistributedDataParallel training)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
