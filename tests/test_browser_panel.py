"""A panel of three raters and its adjudication, end to end in real headless Chromium.

Cora (coordinator) makes a 3-rater panel over one gold cell per class on the rounds page; Pia,
Quinn and Ruth each log in and answer their own queue with hotkeys (Ruth disagrees on her first
two patches); Cora watches their progress, opens an adjudication over the cells where any two
answers differ, and settles each on the adjudication page with a label and a note, seeing every
panel answer, the reference and the majority; and freezes the consensus as a data set version.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from annotator import panels
from annotator.models import Label, Panel, Round, TaxonNode
from datasets.models import DatasetVersion

from .conftest import answer_queue, log_in, new_page

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_panel_answered_and_adjudicated_end_to_end(
    chromium_browser, live_server, study, gold_cells, coordinator, panel_raters
):
    cora, cora_errors = new_page(chromium_browser)
    leaves = list(
        TaxonNode.objects.filter(taxonomy=study.taxonomy, is_leaf=True)
        .exclude(hotkey="")
        .order_by("order")[:3]
    )
    agreed, other, settled = leaves

    # Cora makes the panel on the rounds page: three raters, one gold cell per class.
    log_in(cora, live_server.url, "cora")
    cora.click("text=Rounds and progress")
    for name in ("pia", "quinn", "ruth"):
        cora.check(f"#create-panel input[value={name}]")
    cora.select_option("#id_panel-mode", "per-class")
    cora.fill("#id_panel-per_class", "1")
    cora.fill("#id_panel-seed", "5")
    cora.fill("#id_panel-name", "trio")
    cora.click("button.create-panel")
    cora.wait_for_selector(".messages li")
    assert "Panel trio made" in cora.inner_text(".messages li")
    panel = Panel.objects.get(name="trio")
    first_rounds = list(panels.first_rounds(panel))
    total = first_rounds[0].items.count()
    assert total >= 3 and [r.rater.username for r in first_rounds] == ["pia", "quinn", "ruth"]
    rows = cora.locator("article[data-panel=trio] tr[data-kind=blinded]")
    assert rows.count() == 3
    assert cora.inner_text("article[data-panel=trio] tr[data-rater=pia] .done") == f"0 / {total}"

    # Each rater answers their own queue; Ruth disagrees on her first two patches.
    answers = {
        "pia": [agreed.hotkey],
        "quinn": [agreed.hotkey],
        "ruth": [other.hotkey, other.hotkey, agreed.hotkey],
    }
    pages = []
    for round_ in first_rounds:
        page, errors = new_page(chromium_browser)
        pages.append(errors)
        log_in(page, live_server.url, round_.rater.username)
        assert "smear_" not in page.content()
        page.click(f"text={round_.name}")
        answer_queue(page, answers[round_.rater.username])
        assert Label.objects.filter(round=round_).count() == total
        page.context.close()

    # Cora sees every rater finished, and opens an adjudication of the disputed cells.
    cora.goto(f"{live_server.url}/studies/munich/rounds/")
    for name in ("pia", "quinn", "ruth"):
        row = f"article[data-panel=trio] tr[data-rater={name}]"
        assert cora.inner_text(f"{row} .done") == f"{total} / {total}"
        assert cora.inner_text(f"{row} .status") == "finished"
    form = cora.locator("article[data-panel=trio] form.adjudication-form")
    form.locator("select[name=adjudicator]").select_option("cora")
    form.locator("select[name=rule]").select_option("any")
    form.locator("input[name=name]").fill("trio-settle")
    form.locator("button", has_text="Open adjudication").click()
    cora.wait_for_selector(".messages li")
    assert "Adjudication trio-settle opened: 2 cells" in cora.inner_text(".messages li")
    adjudication = Round.objects.get(name="trio-settle", kind=Round.Kind.ADJUDICATION)

    # Her home page lists the adjudication as hers; its page shows each panel answer, the
    # reference and the majority, and she settles both cells with a label and a note.
    cora.goto(f"{live_server.url}/")
    assert cora.inner_text("tr[data-adjudication=trio-settle] span") == "0 / 2"
    cora.click("tr[data-adjudication=trio-settle] a")
    cora.wait_for_selector("#consensus")
    screenshots = Path(settings.TEST_RUN_DIR) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    cora.screenshot(path=str(screenshots / "adjudication.png"), full_page=True)
    notes = []
    for step in range(2):
        # The patch loads (it may still be in flight on a loaded machine): fails if it never does.
        cora.wait_for_function("document.getElementById('patch').naturalWidth > 0")
        cora.click("#context-view summary")
        cora.wait_for_function("document.getElementById('context').naturalWidth === 600")
        assert cora.inner_text("tr[data-rater=pia] .answer").startswith(agreed.code)
        assert cora.inner_text("tr[data-rater=ruth] .answer").startswith(other.code)
        assert cora.inner_text("tr.majority .answer").startswith(agreed.code)
        assert cora.inner_text("tr.reference .answer") != "none"
        note = f"checked at higher zoom ({step + 1})"
        notes.append(note)
        cora.check(f"#consensus input[value={settled.code}]")
        cora.fill("#consensus textarea[name=note]", note)
        cora.click("#consensus button.save")
        cora.wait_for_selector(".messages li")
    assert "Every disputed cell has a consensus" in cora.inner_text(".messages li")
    assert cora.inner_text("#progress-text") == "2 of 2 settled"

    consensus = Label.objects.filter(round=adjudication).select_related("node")
    assert sorted(label.note for label in consensus) == notes
    assert {label.node.code for label in consensus} == {settled.code}
    assert {label.rater.username for label in consensus} == {"cora"}
    made = panels.consensus_labels(panel, panels.ADJUDICATED)
    assert made.pending == 0 and made.summary()["by_origin"] == {
        "adjudicated": 2,
        "majority": total - 2,
    }

    cora.goto(f"{live_server.url}/studies/munich/rounds/")
    assert cora.inner_text("tr[data-adjudication=trio-settle] .done") == "2 / 2"
    cora.screenshot(path=str(screenshots / "panel-rounds.png"), full_page=True)

    # She freezes the adjudicated consensus as a data set version on the data sets page.
    cora.goto(f"{live_server.url}/studies/munich/datasets/")
    cora.fill("#make-dataset input[name=name]", "trio-consensus")
    cora.fill("#make-dataset input[name=source]", "adjudicated")
    cora.select_option("#make-dataset select[name=panel]", "trio")
    cora.click("#make-dataset button[type=submit]")
    cora.wait_for_selector(".messages li")
    frozen = DatasetVersion.objects.get(study=study, name="trio-consensus")
    assert frozen.label_source == DatasetVersion.LabelSource.ADJUDICATED
    assert frozen.panel == panel and frozen.source_round == adjudication
    settled_cells = {label.cell_id for label in consensus}
    assert {row.cell for row in frozen.rows()} == set(panel_cells(panel))
    origins = frozen.origin_of()
    assert {origins[cell] for cell in settled_cells} == {"adjudicated"}
    assert set(origins.values()) == {"adjudicated", "majority"}
    assert {row.class_name for row in frozen.rows() if row.cell in settled_cells} == {settled.code}
    listed = cora.inner_text(f"tr[data-dataset='{frozen.pk}'] .label-source")
    assert "2 adjudicated" in listed and f"{total - 2} majority" in listed
    assert cora_errors == [] and all(errors == [] for errors in pages)


def panel_cells(panel) -> list[int]:
    return panels.panel_table(panel).cells
