"""Plots of an agreement report as SVG text for the page.

matplotlib's `Figure` is used directly, without pyplot: no global figure state and no display,
which is what a web server (several threads, no screen) needs.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.template.loader import render_to_string
from matplotlib.figure import Figure

from core.plots import SVG_SHOWN_PX, confusion_figure, svg, text_points

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
    points = []
    for comparison in report.comparisons:
        stats = comparison.agreement.groups.get(group)
        if stats is None or stats.sensitivity is None or stats.specificity is None:
            continue
        points.append((comparison, 1 - stats.specificity, stats.sensitivity))
    if not points:
        return None
    width = 4.2
    text = text_points(width, SVG_SHOWN_PX)
    figure = Figure(figsize=(width, width))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="#bbb", linewidth=0.8, linestyle="--")
    for comparison, x, y in points:
        axes.scatter([x], [y], s=36, zorder=3)
        axes.annotate(
            f"{comparison.b.name}\nvs {comparison.a.name}",
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
    axes.set_title(f"{group}: raters against their reference", fontsize=text)
    return figure


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


def standalone_html(report: Report) -> str:
    """The report as one self-contained HTML file (styles and plots inline)."""
    stylesheet = Path(settings.BASE_DIR, "frontend", "static", "css", "report.css").read_text()
    context = {**page_context(report), "stylesheet": stylesheet}
    return render_to_string("annotator/agreement_standalone.html", context)
