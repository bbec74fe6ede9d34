"""Plots of an agreement report as SVG text for the page.

matplotlib's `Figure` is used directly, without pyplot: no global figure state and no display,
which is what a web server (several threads, no screen) needs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from django.conf import settings
from django.template.loader import render_to_string
from matplotlib.figure import Figure

from core.plots import SVG_SHOWN_PX, confusion_figure, svg, text_points

from .agreement import GroupStats
from .panel_agreement import CANNOT_CLASSIFY
from .panel_reports import PanelReport
from .panels import TIE_RULE
from .reports import NOTHING_COMPARED, Comparison, Report


def confusion_svg(comparison: Comparison) -> str | None:
    """The comparison's confusion heatmap, reference rows and rater columns; None where
    nothing was compared (an empty heatmap would say nothing)."""
    if not comparison.compared:
        return None
    result = comparison.agreement
    return svg(
        confusion_figure(
            result.matrix,
            result.labels,
            rows=f"{comparison.a.name} (reference)",
            columns=f"{comparison.b.name} (rater)",
        )
    )


def _label_offset(x: float, y: float) -> dict:
    """Where a point's label goes so that it stays inside the axes: to the left of a point in
    the right part, above a point in the lower part (not over the x-axis), else below."""
    right, low = x > 0.55, y < 0.3
    return {
        "xytext": (-8 if right else 8, 8 if low else -8),
        "ha": "right" if right else "left",
        "va": "bottom" if low else "top",
    }


def group_points_figure(report: Report, group: str) -> Figure | None:
    """Each comparison's sensitivity and specificity for one yes/no question, in ROC space,
    where a model's ROC curve can be drawn beside them; None if no comparison has a point."""
    return points_figure(
        [
            (f"{comparison.b.name}\nvs {comparison.a.name}", comparison.agreement.groups.get(group))
            for comparison in report.comparisons
        ],
        f"{group}: raters against their reference",
    )


def points_figure(labelled: list[tuple[str, GroupStats | None]], title: str) -> Figure | None:
    """Sensitivity against 1 - specificity of each labelled point, in ROC space; None if no
    point is defined."""
    at: dict[tuple[float, float], list[str]] = {}
    for label, stats in labelled:
        if stats is not None and stats.sensitivity is not None and stats.specificity is not None:
            at.setdefault((1 - stats.specificity, stats.sensitivity), []).append(label)
    if not at:
        return None
    # Points at the same place share one label, so no label is drawn over another.
    points = [(", ".join(labels), x, y) for (x, y), labels in at.items()]
    width = 4.2
    text = text_points(width, SVG_SHOWN_PX)
    figure = Figure(figsize=(width, width))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="#bbb", linewidth=0.8, linestyle="--")
    for label, x, y in points:
        axes.scatter([x], [y], s=36, zorder=3)
        axes.annotate(
            label,
            (x, y),
            textcoords="offset points",
            fontsize=text,
            annotation_clip=False,
            **_label_offset(x, y),
        )
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("1 - specificity", fontsize=text)
    axes.set_ylabel("sensitivity", fontsize=text)
    axes.tick_params(labelsize=text)
    axes.set_title(title, fontsize=text)
    return figure


def pairwise_figure(matrix: dict[str, dict[str, float | None]]) -> Figure:
    """The pairwise Cohen's kappa matrix as a heatmap: colour from 0 (chance) to 1 (complete
    agreement), below chance drawn as 0, the value written in each cell, a dash (on grey) where
    kappa is undefined. Long names widen the saved (tightly cropped) figure, which the page
    then shrinks more: the text is enlarged until it is legible at the shrunk size."""
    names = list(matrix)
    values = np.array(
        [[np.nan if matrix[r].get(c) is None else matrix[r][c] for c in names] for r in names],
        dtype=float,
    )
    side = max(3.5, 0.6 * len(names) + 2)
    text = text_points(side + 1, SVG_SHOWN_PX)
    for _ in range(4):
        figure = _pairwise_drawn(values, names, side, text)
        figure.draw_without_rendering()
        # As `core.plots.svg` saves it: cropped tight, with the padding savefig adds.
        width = figure.get_tightbbox().width + 2 * matplotlib.rcParams["savefig.pad_inches"]
        needed = text_points(width, SVG_SHOWN_PX)
        if needed <= text:
            break
        text = needed * 1.02
    return figure


def _pairwise_drawn(values: np.ndarray, names: list[str], side: float, text: float) -> Figure:
    figure = Figure(figsize=(side + 1, side))
    cell_points = (side - 2) * 72 / max(1, len(names))
    number = max(text, min(1.6 * text, 0.3 * cell_points))
    axes = figure.subplots()
    colours = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d5dd")
    image = axes.imshow(np.clip(values, 0, 1), cmap=colours, vmin=0, vmax=1)
    ticks = range(len(names))
    axes.set_xticks(ticks, names, rotation=90)
    axes.set_yticks(ticks, names)
    axes.tick_params(labelsize=text)
    for row, column in np.ndindex(values.shape):
        value = values[row, column]
        shown = "\u2013" if np.isnan(value) else f"{value:.2f}"
        colour = "black" if np.isnan(value) or value > 0.6 else "white"
        axes.text(column, row, shown, ha="center", va="center", fontsize=number, color=colour)
    bar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    bar.set_label("Cohen's \u03ba (below 0 shown as 0)", fontsize=text)
    bar.ax.tick_params(labelsize=text)
    return figure


def panel_context(report: PanelReport, cell_links: dict[int, dict[str, str]] | None = None) -> dict:
    """What the panel section of the report templates needs: the figures, the heatmap, each
    group's points of the raters against the reference, and the disputed cells (with the links
    `cell_links` gives per cell; none in the standalone file)."""
    figures = report.agreement
    group_plots = {
        name: points_figure(
            [(side.rater, side.agreement.groups.get(name)) for side in report.against_reference],
            f"{name}: panel raters against {report.reference}",
        )
        for name in report.groups
    }
    cell_links = cell_links or {}
    return {
        "panel": report,
        "figures": figures,
        "per_class": list(figures.per_class.items()),
        "pairwise_svg": svg(pairwise_figure(report.pairwise)) if len(report.pairwise) > 1 else None,
        "group_plots": [svg(figure) for figure in group_plots.values() if figure is not None],
        "groups_without_points": [name for name, figure in group_plots.items() if figure is None],
        "against_reference": [
            {"side": side, "groups": [side.agreement.groups.get(name) for name in report.groups]}
            for side in report.against_reference
        ],
        "disputed": [
            {
                "cell": cell,
                "answers": [_shown(cell.answers[rater]) for rater in figures.raters],
                "reference": _shown(cell.reference),
                "links": cell_links.get(cell.cell, {}),
            }
            for cell in report.disputed
        ],
        "links": bool(cell_links),
        "tie_rule": TIE_RULE,
        "confidence_pct": f"{figures.bootstrap['confidence'] * 100:g}",
    }


def _shown(answer: str | None) -> str:
    """A panel answer as the page shows it."""
    if answer is None:
        return "\u2013"
    return "cannot classify" if answer == CANNOT_CLASSIFY else answer


def page_context(report: Report) -> dict:
    """What the report templates need: summary rows, per-comparison tables and the plots (a
    question no comparison answered has no plot, only its name)."""
    groups = sorted({name for c in report.comparisons for name in c.agreement.groups})
    rows = [
        {
            "comparison": comparison,
            "result": comparison.agreement,
            "groups": [comparison.agreement.groups.get(name) for name in groups],
            "per_class": list(comparison.agreement.per_class.items()),
            "confusion_svg": confusion_svg(comparison),
        }
        for comparison in report.comparisons
    ]
    confidence = report.comparisons[0].agreement.confidence if report.comparisons else 0.95
    figures = {name: group_points_figure(report, name) for name in groups}
    return {
        "report": report,
        "rows": rows,
        "groups": groups,
        "group_plots": [svg(figure) for figure in figures.values() if figure is not None],
        "groups_without_points": [name for name, figure in figures.items() if figure is None],
        # The summary's columns after n and the excluded count: kappa, agreement, the groups.
        "measure_columns": 2 + len(groups),
        "confidence_pct": f"{confidence * 100:g}",
        "nothing_compared": NOTHING_COMPARED,
    }


def standalone_html(report: Report, panel: PanelReport | None = None) -> str:
    """The report as one self-contained HTML file (styles and plots inline), with the panel
    section when a panel report is given."""
    stylesheet = Path(settings.BASE_DIR, "frontend", "static", "css", "report.css").read_text()
    context = {**page_context(report), "stylesheet": stylesheet}
    if panel is not None:
        context["panel_section"] = panel_context(panel)
    return render_to_string("annotator/agreement_standalone.html", context)
