"""Decode heads and their blocks: PSP (pyramid pooling), DeepLabV3+ (ASPP + decoder), the FCN auxiliary head.

Every head reads the encoder's six feature maps ``[input, stride 2, stage 1 (stride 4), stage 2, stage 3
(stride 16), stage 4]`` by index: DeepLabV3+ takes its low-level features from stage 1, the auxiliary head
sits on stage 3 and the decode heads on stage 4. Heads are initialised mmseg-style (see ``init_head``).

Note: the pooling branches (PSP bin 1, ASPP image pooling) normalise a 1x1 map, so BatchNorm in train mode
needs more than one image per (Sync)BatchNorm group, as in mmsegmentation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
AUX_INDEX = 4  # stage 3, stride 16 (before dilation)
DEEP_INDEX = 5  # stage 4


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        padding = (kernel_size // 2) * dilation
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def upsample(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def init_head(module: nn.Module, classifier: nn.Conv2d) -> None:
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
        return torch.cat([x] + [upsample(stage(x), size) for stage in self.stages], dim=1)


class PSPHead(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, dropout: float = 0.1, channels: int = PSP_CHANNELS
    ):
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels, in_channels // 4, PSP_BINS)
        self.bottleneck = ConvBNReLU(self.ppm.out_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_head(self, self.classifier)

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
        outs.append(upsample(self.image_pool(x), x.shape[-2:]))
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
        init_head(self, self.classifier)

    def forward(self, features: list[Tensor]) -> Tensor:
        low = self.low_level(features[LOW_LEVEL_INDEX])
        x = upsample(self.aspp(features[DEEP_INDEX]), low.shape[-2:])
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
        init_head(self, self.classifier)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))
