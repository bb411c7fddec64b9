"""Training-time augmentation of one tile: flips, photometric changes, random rescale then crop or pad.

Every draw comes from the generator the dataset seeds from the run's seed and the sample's position in the
training stream, so a run is the same whatever the number of loader workers, and a resumed run draws
exactly what the uninterrupted one did. Each option is off unless set; with all off, no draw is made.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

AUGMENT_KEYS = ("hflip", "vflip", "photometric", "scale")
PHOTOMETRIC_KEYS = ("brightness", "contrast", "saturation", "hue", "gamma")
IGNORE_INDEX = 255
# ITU-R BT.601 luma, the weights torchvision's ColorJitter uses for grey.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _pair(value, name: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2 or not 0 < float(value[0]) <= float(value[1]):
        raise ValueError(f"augment.{name} must be [low, high] with 0 < low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def check_augment(augment: dict | None) -> None:
    """Refuse unknown keys and out-of-range values, naming them (before any training)."""
    augment = augment or {}
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"unknown augment option(s) {unknown}; valid: {list(AUGMENT_KEYS)}")
    if augment.get("scale") is not None:
        _pair(augment["scale"], "scale")
    photometric = augment.get("photometric")
    if photometric is None:
        return
    if not isinstance(photometric, dict):
        raise ValueError(f"augment.photometric must be null or a mapping of {PHOTOMETRIC_KEYS}")
    unknown = sorted(set(photometric) - set(PHOTOMETRIC_KEYS))
    if unknown:
        raise ValueError(f"unknown augment.photometric option(s) {unknown}; valid: {list(PHOTOMETRIC_KEYS)}")
    for key, limit in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.5)):
        value = photometric.get(key)
        if value is not None and not 0 <= float(value) <= limit:
            raise ValueError(f"augment.photometric.{key} must be in [0, {limit}], got {value!r}")
    if photometric.get("gamma") is not None:
        _pair(photometric["gamma"], "photometric.gamma")


def flip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator, augment: dict):
    """The optional flips (off by default: the reference found they hurt on NAIC)."""
    if augment.get("hflip") and rng.random() < 0.5:
        image, label = image[:, ::-1], None if label is None else label[:, ::-1]
    if augment.get("vflip") and rng.random() < 0.5:
        image, label = image[::-1], None if label is None else label[::-1]
    return image, label


def photometric(image: np.ndarray, rng: np.random.Generator, options: dict) -> np.ndarray:
    """Brightness, contrast, saturation, hue and gamma, in that order, each drawn per image.

    brightness / contrast / saturation ``b``: a factor uniform in [1 - b, 1 + b] scales the image / its
    distance to its mean grey / each pixel's distance to its own grey (torchvision's ColorJitter);
    hue ``h``: the chroma is rotated by a uniform fraction of a turn in [-h, h] (YIQ space); gamma
    ``[low, high]``: ``255 * (x / 255) ** g``, g log-uniform in [low, high]. The result is rounded to uint8.
    """
    x = image.astype(np.float32)
    if options.get("brightness"):
        x = x * rng.uniform(1 - options["brightness"], 1 + options["brightness"])
    if options.get("contrast"):
        mean = float((np.clip(x, 0, 255) @ _LUMA).mean())
        x = mean + rng.uniform(1 - options["contrast"], 1 + options["contrast"]) * (x - mean)
    if options.get("saturation"):
        grey = (np.clip(x, 0, 255) @ _LUMA)[..., None]
        x = grey + rng.uniform(1 - options["saturation"], 1 + options["saturation"]) * (x - grey)
    if options.get("hue"):
        angle = 2 * np.pi * rng.uniform(-options["hue"], options["hue"])
        cos, sin = np.cos(angle), np.sin(angle)
        rotate = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], dtype=np.float32)
        x = np.clip(x, 0, 255) @ (_YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ).T
    if options.get("gamma"):
        low, high = options["gamma"]
        gamma = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        x = 255.0 * (np.clip(x, 0, 255) / 255.0) ** gamma
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rescale_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, scale, size: int | None):
    """Resize by a factor uniform in ``scale`` (image bilinear, label nearest), then cut a random window of
    the input size (``size``, or the tile's own) out of it, padding with black and ignored label (255)
    where the rescaled tile is smaller."""
    out_h, out_w = (size, size) if size else image.shape[:2]
    factor = rng.uniform(*scale)
    new_h, new_w = max(1, round(out_h * factor)), max(1, round(out_w * factor))
    image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(np.ascontiguousarray(label)).resize((new_w, new_h), Image.NEAREST))
    top = int(rng.integers(0, abs(new_h - out_h) + 1))
    left = int(rng.integers(0, abs(new_w - out_w) + 1))
    if new_h >= out_h and new_w >= out_w:
        return image[top : top + out_h, left : left + out_w], label[top : top + out_h, left : left + out_w]
    canvas = np.zeros((max(new_h, out_h), max(new_w, out_w), 3), dtype=image.dtype)
    labels = np.full(canvas.shape[:2], IGNORE_INDEX, dtype=label.dtype)
    y, x = (top if new_h < out_h else 0), (left if new_w < out_w else 0)
    canvas[y : y + new_h, x : x + new_w], labels[y : y + new_h, x : x + new_w] = image, label
    y, x = (0 if new_h < out_h else top), (0 if new_w < out_w else left)
    return canvas[y : y + out_h, x : x + out_w], labels[y : y + out_h, x : x + out_w]
