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


# Text on a figure is at least this many pixels tall where a page shows it.
MIN_TEXT_PX = 11
# The agreement page shows its inline SVG figures at most this wide (report.css, `.plots svg`).
SVG_SHOWN_PX = 560
# Pixels per inch of the PNG figures (the training report's, in media storage).
PNG_DPI = 110


def text_points(width_in: float, shown_px: float, px_per_inch: float = 96) -> float:
    """The point size at which text on a figure `width_in` inches wide is MIN_TEXT_PX tall
    where a page shows the figure at most `shown_px` wide (never wider than its natural size,
    `px_per_inch`). A figure shown shrunk needs larger text; one at natural size 8.25 pt."""
    shown = min(shown_px, width_in * px_per_inch)
    return MIN_TEXT_PX * width_in * 72 / shown


def confusion_figure(
    matrix,
    labels: list[str],
    *,
    rows: str,
    columns: str,
    shown_px: float = SVG_SHOWN_PX,
    px_per_inch: float = 96,
) -> Figure:
    """Heatmap of a confusion matrix: colour is the share of the row's total, the number the
    count of cells. Shared by the agreement report and the training report. The text is sized
    for the width the page shows the figure at (`text_points`); the counts as large as a cell
    holds (a few digits in about 40 % of a cell's side), never below that floor."""
    counts = np.array(matrix, dtype=float).reshape(len(labels), len(labels))
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = max(3.5, 0.42 * len(labels) + 1.5)
    figure = Figure(figsize=(side + 1, side))
    text = text_points(side + 1, shown_px, px_per_inch)
    cell_points = (side - 1.5) * 72 / max(1, len(labels))
    number = max(text, min(2 * text, 0.4 * cell_points))
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=90)
    axes.set_yticks(ticks, labels)
    axes.tick_params(labelsize=text)
    axes.set_xlabel(columns, fontsize=text)
    axes.set_ylabel(rows, fontsize=text)
    for row, col in zip(*np.nonzero(counts), strict=True):
        colour = "white" if shares[row, col] > 0.6 else "black"
        count = int(counts[row, col])
        axes.text(col, row, count, ha="center", va="center", fontsize=number, color=colour)
    bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    bar.set_label("share of the row", fontsize=text)
    bar.ax.tick_params(labelsize=text)
    return figure


def png(figure: Figure) -> bytes:
    """The figure as a PNG file's bytes, for reports stored in media storage."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI, bbox_inches="tight")
    return buffer.getvalue()
