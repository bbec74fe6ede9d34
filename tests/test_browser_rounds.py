"""A blinded round and its repeat, end to end in real headless Chromium.

Cora (coordinator) makes a blinded round for Rita over one gold cell per class, Rita answers it
patch by patch with hotkeys (going back once to change an answer), Cora schedules a repeat with a
washout, Rita finds it closed, the washout passes, Rita answers the repeat, and Cora reads the
agreement report with its plots.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from annotator.models import Label, Round, TaxonNode

from .conftest import answer_queue, log_in, new_page

pytestmark = pytest.mark.django_db(transaction=True)


def _wait_for_patch(page, round_) -> None:
    """Until the patch on screen is the one of the item whose caption is shown."""
    page.wait_for_function("document.body.dataset.imageShown === 'true'", timeout=15000)
    position = int(page.evaluate("document.body.dataset.position"))
    token = round_.items.get(position=position).token
    assert page.evaluate("document.getElementById('patch').src").endswith(f"/{token}/patch.png")


def _answer_all(page, round_, hotkeys: list[str]) -> None:
    """Answer every item of the open queue: hotkeys in turn, 'x' (cannot classify) for one,
    checking that each patch shown is the one of its item."""
    keys = [
        "x" if index == 1 else hotkeys[index % len(hotkeys)]
        for index in range(round_.items.count())
    ]
    answer_queue(page, keys, check_item=lambda shown: _wait_for_patch(shown, round_))


def test_a_blinded_round_and_its_repeat_end_to_end(
    chromium_browser, live_server, study, gold_cells, rater, coordinator
):
    cora, cora_errors = new_page(chromium_browser)
    rita, rita_errors = new_page(chromium_browser)
    hotkeys = list(
        TaxonNode.objects.filter(taxonomy=study.taxonomy, is_leaf=True)
        .exclude(hotkey="")
        .values_list("hotkey", flat=True)[:4]
    )

    # Cora makes the round from the rounds page.
    log_in(cora, live_server.url, "cora")
    cora.click("text=Rounds and progress")
    cora.select_option("#id_rater", "rita")
    cora.select_option("#id_mode", "per-class")
    cora.fill("#id_per_class", "1")
    cora.fill("#id_seed", "5")
    cora.fill("#id_name", "rita-blinded")
    cora.click("button.create")
    cora.wait_for_selector(".messages li")
    assert "Round rita-blinded made" in cora.inner_text(".messages li")
    round_ = Round.objects.get(name="rita-blinded")
    total = round_.items.count()
    assert total == len({code for code in Counter(c["code"] for c in _planted(gold_cells))})
    assert cora.inner_text("tr[data-round=rita-blinded] .done") == f"0 / {total}"

    # Rita sees only the queue: one patch at a time, answered with hotkeys.
    log_in(rita, live_server.url, "rita")
    assert "smear_" not in rita.content()
    rita.click("text=rita-blinded")
    _answer_all(rita, round_, hotkeys)
    assert Label.objects.filter(round=round_).count() == total
    assert Label.objects.filter(round=round_, cannot_classify=True).count() == 1

    # Back goes to the previous cell and shows her answer there; a new key changes it.
    rita.keyboard.press("ArrowLeft")
    rita.wait_for_function(f"document.body.dataset.position === '{total - 1}'")
    _wait_for_patch(rita, round_)
    assert rita.inner_text("#current-answer").startswith("Your answer:")
    changed_to = TaxonNode.objects.get(taxonomy=study.taxonomy, hotkey=hotkeys[-1]).code
    rita.keyboard.press(hotkeys[-1])
    rita.wait_for_function(
        f"document.getElementById('current-answer').textContent.includes('{changed_to}')"
    )
    position = total - 1
    item = round_.items.get(position=position)
    assert Label.objects.get(round=round_, cell=item.cell).node.code == changed_to
    assert all(label.seconds_spent > 0 for label in Label.objects.filter(round=round_))
    # Backspace means back too, as on the annotation screen (where it never deletes); the key
    # help on the page says so.
    rita.keyboard.press("Backspace")
    rita.wait_for_function(f"document.body.dataset.position === '{total - 2}'")
    help_text = rita.eval_on_selector("#key-help", "e => e.textContent")
    assert "← / Backspaceprevious cell" in help_text and "Delete" not in help_text
    # A choice clicked with the mouse keeps no focus, so Space then skips instead of pressing it.
    _wait_for_patch(rita, round_)
    rita.click("button.choice >> nth=0")
    rita.wait_for_function("document.getElementById('status').textContent === 'Saved.'")
    assert rita.evaluate("document.activeElement.tagName") != "BUTTON"
    rita.keyboard.press("Space")
    rita.wait_for_function(f"document.body.dataset.position === '{total - 1}'")

    # Cora schedules the repeat eleven months on; the page shows Rita's progress.
    cora.goto(f"{live_server.url}/studies/munich/rounds/")
    assert cora.inner_text("tr[data-round=rita-blinded] .done") == f"{total} / {total}"
    later = (timezone.now() + timedelta(days=330)).strftime("%Y-%m-%dT%H:%M")
    row = cora.locator("tr[data-round=rita-blinded]")
    row.locator("input[name=not_before]").fill(later)
    row.locator("input[name=seed]").fill("6")
    row.locator("button", has_text="Schedule repeat").click()
    cora.wait_for_selector(".messages li")
    repeat = Round.objects.get(repeats=round_)
    assert "scheduled, not before" in cora.inner_text(".messages li")

    # Before the washout ends Rita cannot open it, by the page or by the API.
    rita.goto(live_server.url + "/")
    assert "opens on" in rita.inner_text(f"tr[data-round='{repeat.pk}'] .status")
    rita.goto(f"{live_server.url}/queue/{repeat.pk}/")
    assert "opens on" in rita.inner_text("p.closed")
    status = rita.evaluate(f"fetch('/api/v1/queue/{repeat.pk}/items/1/').then(r => r.status)")
    assert status == 403

    # The washout passes; Rita answers the repeat, which shows none of her earlier answers.
    Round.objects.filter(pk=repeat.pk).update(not_before=timezone.now() - timedelta(minutes=1))
    rita.goto(live_server.url + "/")
    rita.click(f"text={repeat.name}")
    rita.wait_for_function("document.body.dataset.ready === 'true'")
    assert rita.inner_text("#current-answer") == ""
    _answer_all(rita, repeat, hotkeys)
    assert Label.objects.filter(round=repeat).count() == total
    rita.goto(f"{live_server.url}/queue/{round_.pk}/")
    assert "closed when its repeat opened" in rita.inner_text("p.closed")

    # Cora reads the report: gold against both rounds, and the repeat against the round.
    cora.goto(f"{live_server.url}/studies/munich/agreement/")
    pairs = cora.eval_on_selector_all(
        ".agreement-summary tbody tr", "rows => rows.map(r => [r.dataset.a, r.dataset.b])"
    )
    gold = round_.reference.name
    assert pairs == [[gold, "rita-blinded"], [gold, repeat.name], ["rita-blinded", repeat.name]]
    assert cora.locator("figure svg").count() == 2 + 3  # two yes/no plots, three heatmaps
    screenshots = Path(settings.TEST_RUN_DIR) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    cora.screenshot(path=str(screenshots / "agreement.png"), full_page=True)
    assert cora_errors == [] and rita_errors == []


def _planted(cells) -> list[dict]:
    return [
        {"code": label.node.code}
        for label in Label.objects.filter(cell__in=cells, round__kind="gold").select_related("node")
    ]
