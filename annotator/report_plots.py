"""Plots of an agreement report as SVG text for the page.

matplotlib's `Figure` is used directly, without pyplot: no global figure state and no display,
which is what a web server (several threads, no screen) needs.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.template.loader import render_to_string
from matplotlib.figure import Figure

from core.plots import confusion_figure, svg

from .reports import Comparison, Report


def confusion_svg(comparison: Comparison) -> str:
    """The comparison's confusion heatmap, reference rows and rater columns."""
    result = comparison.agreement
    return svg(
        confusion_figure(
            result.matrix,
            result.labels,
            rows=f"{comparison.a.name} (reference)",
            columns=f"{comparison.b.name} (rater)",
        )
    )


def group_points_svg(report: Report, group: str) -> str:
    """Each comparison's sensitivity and specificity for one yes/no question, in ROC space,
    where a model's ROC curve can be drawn beside them."""
    figure = Figure(figsize=(4.2, 4.2))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="#bbb", linewidth=0.8, linestyle="--")
    for comparison in report.comparisons:
        stats = comparison.agreement.groups.get(group)
        if stats is None or stats.sensitivity is None or stats.specificity is None:
            continue
        x, y = 1 - stats.specificity, stats.sensitivity
        axes.scatter([x], [y], s=36, zorder=3)
        axes.annotate(
            f"{comparison.b.name} vs {comparison.a.name}",
            (x, y),
            textcoords="offset points",
            xytext=(6, -10),
            fontsize=7,
        )
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    axes.set_title(f"{group}: raters against their reference", fontsize=9)
    return svg(figure)


def page_context(report: Report) -> dict:
    """What the report templates need: summary rows, per-comparison tables and the plots."""
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
    return {
        "report": report,
        "rows": rows,
        "groups": groups,
        "group_plots": [group_points_svg(report, name) for name in groups],
        "confidence_pct": f"{confidence * 100:g}",
    }


def standalone_html(report: Report) -> str:
    """The report as one self-contained HTML file (styles and plots inline)."""
    stylesheet = Path(settings.BASE_DIR, "frontend", "static", "css", "report.css").read_text()
    context = {**page_context(report), "stylesheet": stylesheet}
    return render_to_string("annotator/agreement_standalone.html", context)
