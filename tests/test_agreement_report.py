"""The agreement report's page, download and command: a pair with nothing compared says so in
words instead of drawing empty figures; the plots' text is legible at the size the page shows
them, and a point's label stays inside its axes."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
from django.core.management import call_command
from django.test import Client

from annotator import agreement, annotation, report_plots, reports, rounds
from annotator.models import Label
from core import plots

from .conftest import client_for

# The smallest text, in pixels where the page shows the figure, that the tests accept.
LEGIBLE_PX = 10
GOLD = "Gold round of anna"  # annotation.gold_round_for's name of anna's round


@pytest.fixture
def two_rounds(study, gold_cells, rater, second_annotator, coordinator):
    """Rita's blinded round, not answered yet, and Bert's, answered as gold says."""
    rita = rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    bert = rounds.create_blinded_round(
        study, second_annotator, coordinator, mode="all", seed=2, name="b1"
    )
    gold = dict(Label.objects.filter(round__kind="gold").values_list("cell_id", "node__code"))
    for item in bert.items.all():
        annotation.set_label(item.cell, bert, second_annotator, node=gold[item.cell_id])
    return rita, bert


def _sections(page: str) -> dict[str, str]:
    """Each comparison's section of the page, by its heading."""
    parts = re.split(r'<section class="comparison">', page)[1:]
    return {re.search(r"<h2>([^<]+)</h2>", part).group(1): part for part in parts}


def test_a_pair_with_nothing_compared_says_so_instead_of_empty_figures(
    study, two_rounds, coordinator
):
    browser = Client()
    browser.force_login(coordinator)
    page = browser.get("/studies/munich/agreement/").content.decode()
    sections = _sections(page)
    empty, full = sections[f"r1 against {GOLD}"], sections[f"b1 against {GOLD}"]
    assert "<svg" not in empty and "per-class" not in empty
    assert f"Nothing compared yet: no cell is classified in both {GOLD} and r1." in empty
    assert "<svg" in full and "per-class" in full
    summary = page.split(f'<tr data-a="{GOLD}" data-b="r1">')[1].split("</tr>")[0]
    assert "nothing compared yet" in summary and "\u2013" not in summary

    body = client_for(coordinator).get(f"/api/v1/studies/{study.pk}/agreement/").json()
    by_rater = {c["b"]: c for c in body["comparisons"]}
    assert by_rater["r1"]["compared"] is False and by_rater["r1"]["n"] == 0
    assert by_rater["r1"]["note"].startswith("Nothing compared yet")
    assert by_rater["b1"]["compared"] is True and by_rater["b1"]["note"] == ""

    text = client_for(coordinator).get(f"/api/v1/studies/{study.pk}/agreement/?format=csv")
    rows = {row["b"]: row for row in csv.DictReader(io.StringIO(text.content.decode()))}
    assert rows["r1"]["note"].startswith("Nothing compared yet") and rows["r1"]["kappa"] == ""
    assert rows["b1"]["note"] == "" and float(rows["b1"]["kappa"]) == 1.0


def test_the_command_says_nothing_compared_in_each_format(study, two_rounds, tmp_path):
    written = {}
    for format_ in ("json", "csv", "html"):
        out = tmp_path / f"report.{format_}"
        call_command("agreement_report", "--study", "munich", "--format", format_, "--out", out)
        written[format_] = out.read_text()
    by_rater = {c["b"]: c for c in json.loads(written["json"])["comparisons"]}
    assert by_rater["r1"]["compared"] is False
    assert "Nothing compared yet" in next(csv.DictReader(io.StringIO(written["csv"])))["note"]
    empty = _sections(written["html"])[f"r1 against {GOLD}"]
    assert "Nothing compared yet" in empty and "<svg" not in empty


def test_a_study_where_nothing_is_compared_draws_no_question_plot(
    study, gold_cells, rater, coordinator
):
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    context = report_plots.page_context(reports.build_report(study))
    assert context["group_plots"] == []
    assert "blast" in context["groups_without_points"]
    browser = Client()
    browser.force_login(coordinator)
    page = browser.get("/studies/munich/agreement/").content.decode()
    assert "<svg" not in page and "blast" in page.split("Yes/no questions")[1].split("<section")[0]


def _text_px(svg_text: str) -> list[float]:
    """Each text's height in pixels where the page shows the SVG: at most SVG_SHOWN_PX wide
    (report.css), never above its natural size (1 pt = 4/3 px)."""
    width = float(re.search(r'<svg[^>]*\swidth="([\d.]+)pt"', svg_text).group(1))
    shown = min(plots.SVG_SHOWN_PX, width * 4 / 3)
    sizes = [float(s) for s in re.findall(r"font-size: ([\d.]+)px", svg_text)]
    assert sizes, "no text in the figure"
    return [size * shown / width for size in sizes]


@pytest.mark.parametrize("classes", [2, 8, 18, 30])
def test_heatmap_numbers_are_legible_at_the_size_the_page_shows(classes):
    rng = np.random.default_rng(classes)
    labels = [f"C{n:02d}" for n in range(classes)]
    truth = list(rng.choice(labels, 40 * classes))
    said = [t if rng.random() < 0.7 else rng.choice(labels) for t in truth]
    result = agreement.compare_answers(truth, said, labels=labels, groups={})
    figure = plots.confusion_figure(result.matrix, labels, rows="gold", columns="rater")
    shown = _text_px(plots.svg(figure))
    assert min(shown) >= LEGIBLE_PX, (classes, min(shown))


def _point_report(points: list[tuple[float, float]]):
    """A report whose comparisons answer the blast question at these (1 - spec, sens)."""
    from types import SimpleNamespace

    comparisons = []
    for index, (x, y) in enumerate(points):
        stats = agreement.GroupStats(1, 0, 1, 0, sensitivity=y, specificity=1 - x)
        result = SimpleNamespace(groups={"blast": stats}, n=4)
        gold = SimpleNamespace(name="gold-examiner")
        rater = SimpleNamespace(name=f"rita-blind-r{index}")
        comparisons.append(reports.Comparison(gold, rater, result))
    return reports.Report(None, "leaf", [], comparisons)


def test_a_points_label_stays_inside_the_axes_and_off_the_x_axis():
    corners = [
        (0.0, 0.0),
        (1.0, 0.0),
        (0.0, 1.0),
        (1.0, 1.0),
        (0.02, 0.05),
        (0.54, 0.31),
        (0.56, 0.29),
    ]
    figure = report_plots.group_points_figure(_point_report(corners), "blast")
    figure.draw_without_rendering()
    axes = figure.axes[0]
    inside = axes.get_window_extent()
    labels = [text for text in axes.texts]
    assert len(labels) == len(corners)
    for label in labels:
        box = label.get_window_extent()
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, label.get_text()
        assert inside.y0 <= box.y0 and box.y1 <= inside.y1, label.get_text()
    shown = _text_px(plots.svg(figure))
    assert min(shown) >= LEGIBLE_PX
