"""Input normalisation, in one place: what a model's encoder expects of its uint8 input and how it gets it.

A normalisation is ``{"mean": [r, g, b], "std": [r, g, b]}`` of 0..1 pixel values: the network sees
``(x / 255 - mean) / std``. It is fixed by the encoder's ImageNet weights (:func:`input_normalization`),
recorded in every checkpoint (``preprocess.normalization``; :func:`checkpoint_normalization` reads it back),
applied on the device by :class:`Normalizer`, and, where nodata is painted, painted in the uint8 colour that
it maps to 0 (:func:`mean_colour`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from naic_seg.core.checkpoint import CheckpointError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision / timm ResNets expect ImageNet's mean and std; EfficientNet-Lite was trained in TensorFlow on
# (x - 127) / 128, i.e. mean = std = 0.5 (timm's tf_efficientnet_lite* configs). Random-init encoders learn
# either way; pretrained ones need their own.
IMAGENET_NORMALIZATION = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
LITE_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def input_normalization(encoder: str) -> dict[str, list[float]]:
    """``{"mean": [r, g, b], "std": [r, g, b]}`` (of 0..1 pixel values) the encoder's weights expect."""
    chosen = LITE_NORMALIZATION if "efficientnet_lite" in encoder else IMAGENET_NORMALIZATION
    return {k: list(v) for k, v in chosen.items()}


def checkpoint_normalization(checkpoints: Sequence[dict]) -> dict:
    """The input normalisation the checkpoints' models expect (recorded, or their encoder's for checkpoints
    written before it was recorded); an ensemble must agree, since a batch is normalised once."""
    found = [
        c.get("preprocess", {}).get("normalization") or input_normalization(c["model"]["encoder"])
        for c in checkpoints
    ]
    if any(n != found[0] for n in found):
        raise CheckpointError(f"the ensemble's models expect different input normalisations: {found}")
    return found[0]


def mean_colour(normalization: dict | None) -> list[int]:
    """The uint8 colour a model's input normalisation maps to 0 (ImageNet's mean when it names none)."""
    mean = (normalization or {}).get("mean") or IMAGENET_MEAN
    return [round(m * 255) for m in mean]


class Normalizer(torch.nn.Module):
    """uint8 NCHW -> float normalised (ImageNet's statistics by default), on the batch's own device."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer(
            "shift",
            torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1),
            persistent=False,
        )

    @classmethod
    def of(cls, normalization: dict | None) -> Normalizer:
        """The normaliser of ``{"mean", "std"}`` (None: ImageNet's, what the ResNets' weights expect)."""
        normalization = normalization or IMAGENET_NORMALIZATION
        return cls(normalization["mean"], normalization["std"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale - self.shift
