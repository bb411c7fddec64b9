"""Figures for reports and MLflow: a confusion matrix and validation tiles beside label and prediction."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from naic_seg.core.labels import PALETTE  # noqa: E402


def colourize(index_map: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(PALETTE)] = PALETTE
    return lut[index_map]


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str = "") -> plt.Figure:
    """Row-normalised (recall) heat map with the raw share printed in each cell."""
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_title(title or "confusion matrix (rows sum to 1)")
    fig.tight_layout()
    return fig


def prediction_grid(tiles: Sequence[dict], class_names: Sequence[str], title: str = "") -> plt.Figure:
    """One row per tile: image, label, prediction (class colours; unlabelled pixels black)."""
    rows = max(1, len(tiles))
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for row, tile in zip(axes, tiles, strict=False):
        for ax, img, name in zip(
            row,
            (tile["image"], colourize(tile["label"]), colourize(tile["pred"])),
            (f"{tile['id']}", "label", "prediction"),
            strict=True,
        ):
            ax.imshow(img)
            ax.set_title(name, fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=PALETTE[i % len(PALETTE)] / 255) for i in range(len(class_names))
    ]
    fig.legend(handles, class_names, loc="lower center", ncol=min(4, len(class_names)), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
