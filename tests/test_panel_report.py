"""The panel section of the agreement report (issue 15): its figures are the libraries' on the
panel's table, the reference is one more row and column of the pairwise matrix, a repeat gives
an intra-rater kappa, the disputed cells come weakest majority first; the command, the API and
the page serve it, to overseeing roles only."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import krippendorff
import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from annotator import panels, report_plots, rounds
from annotator.annotation import set_label
from annotator.models import Cell
from annotator.panel_agreement import CANNOT_CLASSIFY
from annotator.panel_reports import PanelRequest, build_panel_report, panel_csv
from core import plots

REFERENCE = "reference (anna)"  # the panel's gold round is anna's
LEGIBLE_PX = 10.9  # core.plots.MIN_TEXT_PX, less rounding in the SVG


def _codes(table) -> tuple[np.ndarray, list[str]]:
    """The table as raters x items codes for the libraries (NaN: not rated or declined)."""
    categories = sorted(
        {a for row in table.ratings for a in row if a not in (None, CANNOT_CLASSIFY)}
    )
    data = np.array(
        [
            [np.nan if a in (None, CANNOT_CLASSIFY) else categories.index(a) for a in row]
            for row in table.ratings
        ],
        dtype=float,
    ).T
    return data, categories


def _answers(round_) -> dict[int, str]:
    return panels.round_answers(round_)


def test_the_figures_are_the_libraries_on_the_panels_table(answered_panel):
    report = build_panel_report(answered_panel, replicates=200, seed=3)
    table = panels.panel_table(answered_panel)
    data, _ = _codes(table)
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert report.agreement.krippendorff_alpha == pytest.approx(expected)
    low, high = report.agreement.krippendorff_alpha_ci
    assert low < expected <= high
    assert report.agreement.bootstrap["over"] == "clusters"  # every curated cell has a patient
    # Ruth declined one cell: unequal ratings per cell, so no Fleiss' kappa, and why.
    assert report.agreement.fleiss_kappa is None
    assert "unequal numbers of ratings" in report.agreement.fleiss_kappa_reason
    assert report.agreement.declined == 1 and report.unrated == 0
    assert "1 'cannot classify' and 0 not rated yet" in report.left_out

    # Once Ruth classifies that cell too, Fleiss' kappa is statsmodels'.
    ruth = next(r for r in table.rounds if r.rater.username == "ruth")
    declined = next(c for c, a in _answers(ruth).items() if a == CANNOT_CLASSIFY)
    set_label(Cell.objects.get(pk=declined), ruth, ruth.rater, node=table.reference[declined])
    report = build_panel_report(answered_panel, replicates=0)
    data, _ = _codes(panels.panel_table(answered_panel))
    counts, _ = aggregate_raters(data.T.astype(int))
    assert report.agreement.fleiss_kappa == pytest.approx(fleiss_kappa(counts, method="fleiss"))
    low, high = report.agreement.fleiss_kappa_ci
    assert low < report.agreement.fleiss_kappa < high
    assert report.agreement.krippendorff_alpha_ci is None  # no replicate asked


def test_the_reference_is_a_row_and_column_of_the_pairwise_matrix(answered_panel):
    report = build_panel_report(answered_panel, replicates=0)
    assert report.members == ["pia", "quinn", "ruth", REFERENCE]
    table = panels.panel_table(answered_panel)
    gold = table.reference
    for round_ in table.rounds:
        said = _answers(round_)
        both = [c for c in table.cells if said.get(c) not in (None, CANNOT_CLASSIFY)]
        kappa = cohen_kappa_score([gold[c] for c in both], [said[c] for c in both])
        name = round_.rater.username
        assert report.pairwise[name][REFERENCE] == pytest.approx(kappa)
        assert report.pairwise[REFERENCE][name] == pytest.approx(kappa)
    assert report.pairwise["pia"][REFERENCE] == 1.0  # pia says the gold class everywhere
    assert report.pairwise[REFERENCE][REFERENCE] == 1.0

    by_rater = {side.rater: side.agreement for side in report.against_reference}
    assert by_rater["ruth"].n == len(table.cells) - 1 and by_rater["ruth"].kappa_ci
    assert by_rater["ruth"].excluded_cannot_classify == 1
    assert set(report.groups) == {"blast", "atypical"}
    assert by_rater["pia"].groups["blast"].sensitivity == 1.0


def test_a_repeat_gives_the_raters_intra_rater_kappa(answered_panel, coordinator):
    report = build_panel_report(answered_panel, replicates=0)
    assert report.intra_rater == []
    quinn = next(r for r in panels.first_rounds(answered_panel) if r.rater.username == "quinn")
    repeat = rounds.schedule_repeat(
        quinn, coordinator, not_before=timezone.now() - timedelta(minutes=1), seed=5
    )
    first, gold = _answers(quinn), _answers(answered_panel.reference)
    cells = sorted(first)
    # Back to the gold class on the two cells quinn first read as another; the last cell is
    # not answered in the repeat yet.
    again = {cell: gold[cell] if index < 2 else first[cell] for index, cell in enumerate(cells)}
    for cell_id in cells[:-1]:
        set_label(Cell.objects.get(pk=cell_id), repeat, quinn.rater, node=again[cell_id])

    report = build_panel_report(answered_panel, replicates=0)
    (side,) = report.intra_rater
    assert side.rater == "quinn" and side.first == quinn and side.second == repeat
    shared = cells[:-1]
    assert side.agreement.n == len(shared)
    expected = cohen_kappa_score([first[c] for c in shared], [again[c] for c in shared])
    assert side.agreement.kappa == pytest.approx(expected)
    assert side.agreement.kappa_ci[0] < expected < side.agreement.kappa_ci[1]
    assert report.to_dict()["intra_rater"][0]["second"] == repeat.name


def test_the_most_disputed_cells_come_weakest_majority_first(answered_panel):
    report = build_panel_report(answered_panel, replicates=0)
    table = panels.panel_table(answered_panel)
    cells = table.cells
    # The first cell: three raters, three classes; the second: two against one. Ruth's
    # declined last cell is no disagreement: the others agree.
    assert [d.cell for d in report.disputed] == [cells[0], cells[1]]
    first, second = report.disputed
    assert first.vote.winner is None and first.vote.share == pytest.approx(1 / 3)
    assert first.classes == 3 and second.classes == 2
    assert second.vote.share == pytest.approx(2 / 3)
    assert second.vote.winner == table.reference[cells[1]] == second.reference
    assert first.answers["pia"] == table.reference[cells[0]]
    assert set(first.answers) == {"pia", "quinn", "ruth"}
    assert report.disputed_total == 2
    shortened = build_panel_report(answered_panel, replicates=0, disputed=1)
    assert [d.cell for d in shortened.disputed] == [cells[0]] and shortened.disputed_total == 2


PANEL_KEYS = {
    "raters",
    "items",
    "fleiss_kappa",
    "fleiss_kappa_reason",
    "fleiss_kappa_ci",
    "krippendorff_alpha",
    "krippendorff_alpha_ci",
    "pairwise",
    "per_class",
}


def test_the_command_writes_the_panel_section_in_each_format(answered_panel, tmp_path):
    written = {}
    for format_ in ("json", "csv", "html"):
        out = tmp_path / f"report.{format_}"
        call_command(
            "agreement_report", "--study", "munich", "--panel", "--format", format_, "--out", out
        )
        written[format_] = out.read_text()

    body = json.loads(written["json"])
    assert body["study"] == "munich" and body["comparisons"]  # the study's report beside it
    panel = body["panel"]
    assert set(panel) >= PANEL_KEYS
    assert panel["name"] == "trio" and panel["raters"] == ["pia", "quinn", "ruth"]
    assert panel["items"] == 16
    assert panel["fleiss_kappa"] is None and panel["fleiss_kappa_ci"] is None
    assert "unequal numbers of ratings" in panel["fleiss_kappa_reason"]
    assert len(panel["krippendorff_alpha_ci"]) == 2
    assert panel["pairwise"][REFERENCE]["pia"] == 1.0
    assert panel["disputed"][0]["vote"]["winner"] is None

    rows = list(csv.DictReader(io.StringIO(written["csv"])))
    assert set(rows[0]) == {"section", "row", "column", "value"}
    figures = {(r["section"], r["row"], r["column"]): r["value"] for r in rows}
    assert figures[("panel", "fleiss_kappa", "")] == ""
    assert float(figures[("panel", "krippendorff_alpha", "")]) == pytest.approx(
        panel["krippendorff_alpha"], rel=1e-5
    )
    assert sum(1 for r in rows if r["section"] == "pairwise") == 16  # 3 raters + reference
    assert float(figures[("pairwise", "quinn", REFERENCE)]) == pytest.approx(
        panel["pairwise"]["quinn"][REFERENCE], rel=1e-5
    )

    html = written["html"]
    assert re.search(r'<figure class="pairwise-heatmap"><svg', html)
    assert "Panel trio" in html and 'class="panel-disputed"' in html
    assert "/patch.png" not in html  # the file has no links back to the server

    again = tmp_path / "named.json"
    call_command("agreement_report", "--study", "munich", "--panel", "trio", "--out", again)
    assert json.loads(again.read_text())["panel"]["name"] == "trio"
    plain = tmp_path / "plain.json"
    call_command("agreement_report", "--study", "munich", "--out", plain)
    assert "panel" not in json.loads(plain.read_text())


def test_the_command_names_a_missing_panel(study, tmp_path):
    with pytest.raises(CommandError, match="Study munich has no panel of raters"):
        call_command("agreement_report", "--study", "munich", "--panel")
    with pytest.raises(CommandError, match="No panel 'nope' in study munich"):
        call_command("agreement_report", "--study", "munich", "--panel", "nope")


def test_the_command_bounds_the_panel_bootstrap(answered_panel):
    with pytest.raises(CommandError, match="panel_bootstrap must be a whole number"):
        call_command("agreement_report", "--study", "munich", "--panel", "--panel-bootstrap", "-1")


def test_the_api_serves_the_panel_to_overseers_only(
    api_as, study, answered_panel, coordinator, panel_raters, outsider
):
    url = f"/api/v1/studies/{study.pk}/agreement/"
    response = api_as(coordinator).get(url, {"panel": "trio", "panel_bootstrap": 100})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["study"] == "munich" and set(body["panel"]) >= PANEL_KEYS
    assert body["panel"]["bootstrap"]["replicates"] == 100
    assert "panel" not in api_as(coordinator).get(url).json()

    text = api_as(coordinator).get(url, {"panel": "trio", "format": "csv"})
    assert text.status_code == 200
    assert 'filename="agreement-munich-trio.csv"' in text["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(text.content.decode())))
    assert {r["section"] for r in rows} >= {"panel", "pairwise", "per_class", "disputed"}

    missing = api_as(coordinator).get(url, {"panel": "nope"})
    assert missing.status_code == 404 and "No panel 'nope'" in str(missing.json())
    bad = api_as(coordinator).get(url, {"panel": "trio", "panel_bootstrap": "many"})
    assert bad.status_code == 400 and "panel_bootstrap" in str(bad.json())

    refused = api_as(panel_raters[0]).get(url, {"panel": "trio"})
    assert refused.status_code == 403 and "coordinator" in refused.json()["detail"]
    assert api_as(outsider).get(url, {"panel": "trio"}).status_code == 404


def _page(user, query: str = "") -> tuple[int, str]:
    browser = Client()
    browser.force_login(user)
    response = browser.get(f"/studies/munich/agreement/{query}")
    return response.status_code, response.content.decode()


def test_the_page_shows_the_panel_section_to_a_coordinator(
    study, answered_panel, coordinator, panel_raters
):
    status, page = _page(coordinator)
    assert status == 200
    section = page.split('<section class="panel-report"')[1]
    assert "Panel trio: 3 raters over 16 cells" in section
    assert re.search(r'<figure class="pairwise-heatmap"><svg', section)
    assert "Items have unequal numbers of ratings" in section
    assert 'class="panel-per-class"' in section and 'class="panel-against-reference"' in section
    assert section.count('<figure class="panel-points">') == 2  # blast and atypical
    assert "No rater of the panel has a repeat round." in section
    table = panels.panel_table(answered_panel)
    first = table.cells[0]
    assert f'<tr data-cell="{first}">' in section
    assert f'href="/api/v1/cells/{first}/patch.png"' in section  # patch-only cells
    assert "panel=trio" in section  # its downloads
    assert "<select" not in page  # one panel: nothing to choose

    status, page = _page(coordinator, "?panel=nope")
    assert status == 200 and "No panel &#x27;nope&#x27; in study munich" in page
    assert "Panel trio" in page  # the latest panel beside the refusal

    assert _page(panel_raters[0])[0] == 403


def test_a_study_with_several_panels_offers_a_choice(study, answered_panel, coordinator):
    status, page = _page(coordinator)
    assert "<select" not in page
    answered_panel.pk = None
    answered_panel.name = "copy"
    answered_panel.save()  # a second panel (no rounds of its own)
    status, page = _page(coordinator, "?panel=trio")
    assert status == 200
    assert '<option value="trio" selected>' in page and '<option value="copy">' in page
    status, page = _page(coordinator)
    assert "Panel copy: 0 raters over 0 cells" in page


def _text_px(svg_text: str) -> list[float]:
    width = float(re.search(r'<svg[^>]*\swidth="([\d.]+)pt"', svg_text).group(1))
    shown = min(plots.SVG_SHOWN_PX, width * 4 / 3)
    sizes = [float(s) for s in re.findall(r"font-size: ([\d.]+)px", svg_text)]
    assert sizes
    return [size * shown / width for size in sizes]


@pytest.mark.parametrize("raters", [2, 4, 11])
def test_the_heatmaps_text_is_legible_at_the_size_the_page_shows(raters):
    names = [f"rater-{n}" for n in range(raters)] + [REFERENCE]
    rng = np.random.default_rng(raters)
    matrix = {
        r: {c: (1.0 if r == c else float(rng.uniform(-0.2, 1))) for c in names} for r in names
    }
    matrix[names[0]][names[1]] = matrix[names[1]][names[0]] = None
    shown = _text_px(plots.svg(report_plots.pairwise_figure(matrix)))
    assert min(shown) >= LEGIBLE_PX, min(shown)


def test_panel_requests_are_bounded():
    assert PanelRequest.parse({"panel": "trio", "disputed": "5"}).disputed == 5
    with pytest.raises(ValueError, match="disputed must be a whole number from 0 to 1000"):
        PanelRequest.parse({"disputed": "5000"})
    with pytest.raises(ValueError, match="panel_seed"):
        PanelRequest(seed=-1)


def test_the_csv_has_one_line_per_answer_of_a_disputed_cell(answered_panel):
    report = build_panel_report(answered_panel, replicates=0)
    rows = list(csv.DictReader(io.StringIO(panel_csv(report))))
    first = str(report.disputed[0].cell)
    lines = {
        r["column"]: r["value"] for r in rows if r["section"] == "disputed" and r["row"] == first
    }
    assert set(lines) == {"pia", "quinn", "ruth", "reference", "vote", "share"}
    assert lines["vote"] == "" and float(lines["share"]) == pytest.approx(1 / 3, rel=1e-5)


def test_a_bootstrap_too_large_to_draw_at_once_is_refused(answered_panel, monkeypatch):
    from annotator import panel_reports

    monkeypatch.setattr(panel_reports, "MAX_DRAWS", 100)
    with pytest.raises(ValueError, match="at most 14 replicates for panel trio"):
        build_panel_report(answered_panel, replicates=1000)
    assert build_panel_report(answered_panel, replicates=14).agreement.krippendorff_alpha_ci


def test_a_disputed_cell_on_a_scan_links_to_its_screen_for_those_who_annotate(
    study, scan, gold_cells, coordinator, panel_raters
):
    from annotator.models import Membership

    from .factories import UserFactory

    admin = UserFactory(username="ada")
    Membership.objects.create(study=study, user=admin, role=Membership.Role.ADMIN)
    panel = panels.create_panel(study, panel_raters[:2], coordinator, name="duo", seed=2)
    gold = _answers(panel.reference)
    disputed = min(gold)
    for round_ in panels.first_rounds(panel):
        for cell_id, code in gold.items():
            said = code
            if round_.rater.username == "quinn" and cell_id == disputed:
                said = "LYT" if code != "LYT" else "NGS"
            set_label(Cell.objects.get(pk=cell_id), round_, round_.rater, node=said)

    scan_link = f'href="/studies/munich/scans/{scan.pk}/"'
    status, page = _page(admin)
    row = page.split(f'<tr data-cell="{disputed}">')[1].split("</tr>")[0]
    assert status == 200 and scan_link in row and f"/api/v1/cells/{disputed}/patch.png" in row
    status, page = _page(coordinator)  # a coordinator does not annotate: the patch only
    row = page.split(f'<tr data-cell="{disputed}">')[1].split("</tr>")[0]
    assert scan_link not in row and f"/api/v1/cells/{disputed}/patch.png" in row


def test_a_panel_without_a_reference_has_no_reference_column(study, answered_panel, coordinator):
    answered_panel.reference = None  # as imported ratings are
    answered_panel.save()
    report = build_panel_report(answered_panel, replicates=0)
    assert report.members == ["pia", "quinn", "ruth"] and report.against_reference == []
    body = report.to_dict()
    assert body["reference"] is None and body["groups"] == []
    assert all(d["reference"] is None for d in body["disputed"])
    status, page = _page(coordinator)
    assert status == 200 and "The panel has no reference round" in page
