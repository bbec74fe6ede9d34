"""Figures the reports of several apps draw alike (matplotlib, imported only by report code)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure


def svg(figure: Figure) -> str:
    """The figure as inline SVG for a page (text kept as text: smaller, searchable)."""
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def confusion_figure(matrix, labels: list[str], *, rows: str, columns: str) -> Figure:
    """Heatmap of a confusion matrix: colour is the share of the row's total, the number the
    count of cells. Shared by the agreement report and the training report."""
    counts = np.array(matrix, dtype=float).reshape(len(labels), len(labels))
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = max(3.5, 0.42 * len(labels) + 1.5)
    figure = Figure(figsize=(side + 1, side))
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=90)
    axes.set_yticks(ticks, labels)
    axes.set_xlabel(columns)
    axes.set_ylabel(rows)
    for row, col in zip(*np.nonzero(counts), strict=True):
        colour = "white" if shares[row, col] > 0.6 else "black"
        count = int(counts[row, col])
        axes.text(col, row, count, ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the row")
    return figure


def png(figure: Figure) -> bytes:
    """The figure as a PNG file's bytes, for reports stored in media storage."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()
