"""The decision report's ROC drawn for its page: each source's curve over the threshold and the
rule's own operating point on it (matplotlib, imported only where the page is drawn)."""

from __future__ import annotations

from matplotlib.figure import Figure

from core.plots import SVG_SHOWN_PX, svg, text_points

from .decisions import SOURCE_TITLES, DecisionReport

COLOURS = {"examiners": "#1f77b4", "model": "#d62728"}


def roc_svg(report: DecisionReport) -> str | None:
    """Inline SVG of the sources' ROC curves with the rule's point; None if no source has one."""
    drawn = [result for result in report.sources if result.roc["points"]]
    if not drawn:
        return None
    width = 4.2
    text = text_points(width, SVG_SHOWN_PX)
    figure = Figure(figsize=(width, width))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="#bbb", linewidth=0.8, linestyle="--")
    for result in drawn:
        colour = COLOURS.get(result.source, "#333")
        points = result.roc["points"]
        title = SOURCE_TITLES[result.source].removeprefix("the ")
        axes.plot(
            [p["fpr"] for p in points],
            [p["tpr"] for p in points],
            color=colour,
            label=f"{title} (AUC {result.roc['auc']:.2f})",
        )
        sensitivity = result.metrics["sensitivity"]["value"]
        specificity = result.metrics["specificity"]["value"]
        axes.scatter([1 - specificity], [sensitivity], color=colour, s=40, zorder=3)
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("1 - specificity", fontsize=text)
    axes.set_ylabel("sensitivity", fontsize=text)
    axes.tick_params(labelsize=text)
    axes.legend(loc="lower right", fontsize=text)
    axes.set_title(f"ROC over the {report.rule.group} share; dot: this rule", fontsize=text)
    return svg(figure)
