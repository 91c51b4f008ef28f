"""PNG figures for an artifact: training curves (dense heads) and the confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Accuracy and loss per epoch, training vs validation, side by side (as the recipe does)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for ax, key, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, history[key], "o", markersize=3, label=f"training {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], "-", label=f"validation {key}")
        ax.set_title(f"Training and validation {key}" if title else key)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str
) -> Path:
    fig = confusion_figure(matrix, class_names, title)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                     title: str) -> Any:
    """The confusion matrix as a matplotlib figure (rows: true class; columns: predicted)."""
    plt = _pyplot()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.9 * k, 1.6 + 0.9 * k))
    ax.imshow(matrix, cmap="Blues")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center",
                    color="white" if v > peak / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig
