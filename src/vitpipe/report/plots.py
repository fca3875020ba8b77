"""PNG plots for ``vitpipe report``: confusion matrix, training curves, per-class accuracy, worst mistakes.

Drawn on bare :class:`matplotlib.figure.Figure` objects (the Agg canvas), so nothing touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

_DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})  # no version stamp: same data, same bytes
    return path


def confusion_matrix(predictions: pd.DataFrame, classes: Sequence[str], path: Path) -> Path:
    """Heatmap of test image counts, actual class (rows) by predicted class (columns).

    Args:
        predictions: ``metrics/predictions.csv`` (columns ``actual`` and ``predicted``).
        classes: row and column order; classes seen only in ``predictions`` are appended.
        path: PNG file to write.
    """
    seen = set(predictions["actual"]) | set(predictions["predicted"])
    names = list(classes) + sorted(seen - set(classes))
    pos = {name: i for i, name in enumerate(names)}
    counts = np.zeros((len(names), len(names)), dtype=np.int64)  # (actual, predicted)
    np.add.at(counts, (predictions["actual"].map(pos).to_numpy(), predictions["predicted"].map(pos).to_numpy()), 1)
    n = len(names)
    side = min(4.0 + 0.45 * n, 24.0)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images")
    font = 8 if n <= 20 else 5
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix ({len(predictions)} test images)")
    if n <= 25:
        top = counts.max() or 1
        for (i, j), value in np.ndenumerate(counts):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=font,
                        color="white" if value > top / 2 else "black")
    return _save(fig, path)


# (column of the history, legend, line style) per panel (vitpipe.report.history: DVCLive's
# train/loss_smoothed is train_loss_smoothed); older histories named the smoothed losses train_loss and val_loss.
_CURVES = {
    "loss": (("train_loss_smoothed", "train (label-smoothed)", "-"), ("train_loss", "train", "-"),
             ("val_loss_smoothed", "val (label-smoothed)", "--"), ("val_loss", "val", "--"),
             ("val_cross_entropy", "val cross-entropy (as test.json's loss)", ":")),
    "accuracy": (("train_accuracy", "train", "-"), ("val_accuracy", "val", "--")),
}


def training_curves(history: pd.DataFrame, path: Path) -> Path:
    """Loss and accuracy per epoch, train and validation, from :func:`vitpipe.report.history.read_live_history`."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for k, (metric, curves) in enumerate(_CURVES.items()):
        ax = fig.add_subplot(1, 2, k + 1)
        for column, label, style in curves:
            if column in history:
                ax.plot(history["epoch"], history[column], style, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def per_class_accuracy(per_class: pd.DataFrame, path: Path, *, base: pd.DataFrame | None = None) -> Path:
    """Horizontal bars of test accuracy per class, best at the top; ``base`` accuracies as black ticks.

    A class with no test image (no accuracy) has no bar; the title counts them.
    """
    rows = per_class[per_class["accuracy"].notna()].sort_values(["accuracy", "class"], ascending=[True, False])
    absent = len(per_class) - len(rows)
    n = len(rows)
    fig = Figure(figsize=(8, min(2.0 + 0.3 * n, 40.0)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(n)
    ax.barh(y, rows["accuracy"], color="#4c72b0", label="workspace")
    if base is not None:
        base_acc = rows["class"].map(dict(zip(base["class"], base["accuracy"])))
        known = base_acc.notna().to_numpy()
        ax.scatter(base_acc[known], y[known], marker="|", s=200, color="black", zorder=3, label="base")
        ax.legend(loc="lower right")
    ax.set_yticks(y, rows["class"], fontsize=8 if n <= 40 else 5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy (recall)")
    ax.set_title("Per-class test accuracy" + (f" ({absent} class(es) with no test image not shown)" if absent else ""))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def top_losses(rows: pd.DataFrame, images: Sequence[Image.Image | None], path: Path, *, n_wrong: int,
               columns: int = 4) -> Path:
    """The most confidently wrong test images as thumbnails (fastai's ``plot_top_losses``).

    Args:
        rows: rows of ``metrics/predictions.csv`` (``path``, ``actual``, ``predicted``, ``confidence``), worst first.
        images: each row's image (None: not found or unreadable, drawn as an empty tile).
        path: PNG file to write.
        n_wrong: how many test images are wrong in all (for the title).
        columns: thumbnails per row.
    """
    cols = max(1, min(columns, len(rows)))
    n_rows = max(1, -(-len(rows) // cols))
    fig = Figure(figsize=(2.7 * cols, 3.5 * n_rows + 0.4), layout="constrained")
    for k, ((_, row), image) in enumerate(zip(rows.iterrows(), images)):
        ax = fig.add_subplot(n_rows, cols, k + 1)
        if image is None:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        else:
            ax.imshow(np.asarray(image))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"actual: {row['actual']}\npredicted: {row['predicted']}\nconfidence {row['confidence']:.2f}",
                     fontsize=8, color="darkred")
        ax.set_xlabel(str(row["path"]), fontsize=6)
    fig.suptitle(f"Most confidently wrong test images ({len(rows)} of {n_wrong} wrong)")
    return _save(fig, path)
