"""Backbone weights: reading local weight files and mapping their keys onto an encoder's state dict.

Plain PyTorch (no Kedro, no MLflow). Files are read with ``torch.load(..., weights_only=True)`` or
``safetensors``; nothing here downloads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from naic_seg.core.models.segmentor import SegmentationModel

logger = logging.getLogger(__name__)

_STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
_CLASSIFIER_PREFIXES = ("fc.", "model.fc.", "head.fc.", "classifier.", "head.")


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
