"""The annotation screen in real headless Chromium (Debian's package, driven by Playwright).

An annotator logs in, opens a synthetic scan, clicks five of its planted leukocytes, labels each
with its class's hotkey, reloads, and finds the five labels with the right classes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from annotator.annotation import gold_round_for, set_label
from annotator.models import Cell, Label, LabelChange, TaxonNode

from .conftest import log_in, new_page

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def chromium(chromium_browser):
    """A page of its own, and the script errors it reports."""
    return new_page(chromium_browser)


def _screen_point(page, x: int, y: int) -> dict:
    """Page coordinates of a level-0 image point in the viewer as it is now."""
    return page.evaluate(
        """([x, y]) => {
            const viewer = window.cytomark.viewer;
            const image = new OpenSeadragon.Point(x, y);
            const p = viewer.viewport.imageToViewerElementCoordinates(image);
            const box = viewer.element.getBoundingClientRect();
            return {x: box.left + p.x, y: box.top + p.y};
        }""",
        [x, y],
    )


def _wait_until_saved(page) -> None:
    page.wait_for_function("window.cytomark && window.cytomark.pending() === 0", timeout=15000)
    page.wait_for_selector("#save-status.saved", timeout=15000)


def test_annotator_clicks_and_labels_five_planted_cells_by_keyboard_and_finds_them_after_reload(
    chromium, live_server, annotator, study, scan, planted
):
    page, problems = chromium
    hotkeys = dict(TaxonNode.objects.filter(taxonomy=study.taxonomy).values_list("code", "hotkey"))
    # Five planted cells of distinct classes that have a hotkey, well inside the scan.
    chosen, seen = [], set()
    for cell in planted:
        inside = 150 < cell["x"] < scan.width - 150 and 150 < cell["y"] < scan.height - 150
        if hotkeys.get(cell["code"]) and cell["code"] not in seen and inside:
            chosen.append(cell)
            seen.add(cell["code"])
    assert len(chosen) >= 5, "the synthetic scan should plant at least five classes"
    chosen = chosen[:5]

    _log_in_and_open(page, live_server, scan)
    page.wait_for_function("window.cytomark.viewer.world.getItemAt(0).getFullyLoaded()")

    for cell in chosen:
        point = _screen_point(page, cell["x"], cell["y"])
        page.mouse.click(point["x"], point["y"])
        page.wait_for_selector("#picker:not([hidden])")
        page.keyboard.press(hotkeys[cell["code"]])
    _wait_until_saved(page)

    # The differential count shows the five labels at once.
    for cell in chosen:
        row = page.locator(f"#counts tr[data-code={cell['code']}] td.num").first
        assert row.inner_text() == "1"

    page.reload()
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)
    shown = page.evaluate(
        """() => Array.from(window.cytomark.cells.values()).map(
            c => ({x: c.x, y: c.y, code: c.label && c.label.node}))"""
    )
    assert len(shown) == 5
    for cell in chosen:
        near = [s for s in shown if abs(s["x"] - cell["x"]) <= 4 and abs(s["y"] - cell["y"]) <= 4]
        assert [s["code"] for s in near] == [cell["code"]], (cell, shown)
    assert page.locator("#cell-list li").count() == 5

    screenshots = Path(settings.TEST_RUN_DIR) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "annotate.png"))

    # What the page showed is what the server holds: five gold labels, each in the history.
    labels = Label.objects.filter(round__rater=annotator, round__kind="gold")
    assert sorted(labels.values_list("node__code", flat=True)) == sorted(c["code"] for c in chosen)
    assert Cell.objects.filter(scan=scan).count() == 5
    assert LabelChange.objects.filter(changed_by=annotator, action="create").count() == 5
    assert all(label.seconds_spent >= 0 for label in labels)
    assert problems == []


def _log_in_and_open(page, live_server, scan) -> None:
    log_in(page, live_server.url, "anna")
    page.click(f"text={scan.original_name}")
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)


def test_a_failed_save_is_shown_and_retried_until_it_lands(
    chromium, live_server, annotator, study, scan, planted
):
    page, problems = chromium
    _log_in_and_open(page, live_server, scan)
    failures = {"left": 2}

    def fail_twice(route):
        if route.request.method == "POST" and failures["left"]:
            failures["left"] -= 1
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/api/v1/labels/", fail_twice)
    target = planted[0]
    point = _screen_point(page, target["x"], target["y"])
    page.mouse.click(point["x"], point["y"])
    page.wait_for_selector("#picker:not([hidden])")
    page.keyboard.press("n")
    page.wait_for_selector("#save-status.failed", timeout=10000)
    assert "retrying" in page.inner_text("#save-status")
    _wait_until_saved(page)
    assert failures["left"] == 0
    assert list(Label.objects.values_list("node__code", flat=True)) == ["NGS"]
    assert problems == []


def test_a_change_on_a_stale_copy_shows_the_newer_label_instead_of_overwriting_it(
    chromium, live_server, annotator, study, scan, planted
):
    page, problems = chromium
    target = planted[1]
    cell = Cell.objects.create(study=study, scan=scan, x=target["x"], y=target["y"])
    _log_in_and_open(page, live_server, scan)
    # Meanwhile the same annotator labels the cell in another tab (here: through the ORM).
    from annotator.annotation import gold_round_for, set_label

    set_label(cell, gold_round_for(study, annotator), annotator, node="EOS")

    point = _screen_point(page, target["x"], target["y"])
    page.mouse.click(point["x"], point["y"])
    page.wait_for_selector("#picker:not([hidden])")
    page.keyboard.press("n")
    page.wait_for_selector("#toast:not([hidden])", timeout=10000)
    assert "someone else" in page.inner_text("#toast")
    _wait_until_saved(page)
    shown = page.evaluate("() => Array.from(window.cytomark.cells.values())[0].label.node")
    assert shown == "EOS"
    assert list(Label.objects.values_list("node__code", flat=True)) == ["EOS"]
    assert problems == []


def _drag_right(page, x: int, y: int) -> None:
    """Drag the marker at a level-0 point 40 screen pixels to the right."""
    start = _screen_point(page, x, y)
    page.mouse.move(start["x"], start["y"])
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(start["x"] + 5 * step, start["y"])
    page.mouse.up()


def test_markers_are_dragged_deleted_and_undone_with_the_server_following(
    chromium, live_server, annotator, second_annotator, study, scan, planted
):
    page, problems = chromium
    first, second = planted[2], planted[3]
    _log_in_and_open(page, live_server, scan)
    for cell in (first, second):
        point = _screen_point(page, cell["x"], cell["y"])
        page.mouse.click(point["x"], point["y"])
        page.keyboard.press("l")
    _wait_until_saved(page)
    assert Label.objects.count() == 2

    _drag_right(page, first["x"], first["y"])
    _wait_until_saved(page)
    moved = Cell.objects.order_by("id").first()
    assert moved.x > first["x"] + 10 and abs(moved.y - first["y"]) <= 3 and moved.version == 2

    # Select the second marker, delete it; undo brings it back as a new cell with its label.
    # (Escape first closes the picker the drag opened by the first marker: it may lie over
    # the second.)
    page.keyboard.press("Escape")
    point = _screen_point(page, second["x"], second["y"])
    page.mouse.click(point["x"], point["y"])
    page.keyboard.press("Delete")
    _wait_until_saved(page)
    assert Cell.objects.count() == 1
    page.keyboard.press("Control+z")
    _wait_until_saved(page)
    assert Cell.objects.count() == 2
    restored = Cell.objects.exclude(pk=moved.pk).get()
    assert abs(restored.x - second["x"]) <= 2 and abs(restored.y - second["y"]) <= 2
    assert restored.labels.get().node.code == "LYT"

    # Undo of a label change gives the earlier label back.
    page.keyboard.press("Escape")
    point = _screen_point(page, moved.x, moved.y)
    page.mouse.click(point["x"], point["y"])
    page.keyboard.press("m")
    _wait_until_saved(page)
    assert moved.labels.get().node.code == "MON"
    page.keyboard.press("Control+z")
    _wait_until_saved(page)
    assert moved.labels.get().node.code == "LYT"

    # Once another examiner has labelled the cell too, it stays where it is: the server
    # refuses the move (409), the page says why and puts the marker back.
    set_label(moved, gold_round_for(study, second_annotator), second_annotator, node="NGS")
    moved.refresh_from_db()
    page.keyboard.press("Escape")
    _drag_right(page, moved.x, moved.y)
    page.wait_for_selector("#toast:not([hidden])", timeout=15000)
    assert "cannot be moved" in page.inner_text("#toast")
    _wait_until_saved(page)
    assert Cell.objects.get(pk=moved.pk).x == moved.x
    page.wait_for_function(
        "([id, x]) => [...window.cytomark.cells.values()].some(c => c.id === id && c.x === x)",
        arg=[moved.pk, moved.x],
        timeout=15000,
    )
    assert problems == []


def test_a_suggested_class_is_accepted_with_enter(
    chromium, live_server, annotator, study, scan, planted
):
    from annotator.models import Suggestion

    page, problems = chromium
    target = planted[4]
    cell = Cell.objects.create(study=study, scan=scan, x=target["x"], y=target["y"])
    leaf = TaxonNode.objects.get(taxonomy=study.taxonomy, code="LYT")
    Suggestion.objects.create(cell=cell, code="LYT", node=leaf, probability=0.91, source="test")
    _log_in_and_open(page, live_server, scan)
    page.wait_for_function("window.cytomark.viewer.world.getItemAt(0).getFullyLoaded()")
    point = _screen_point(page, target["x"], target["y"])
    page.mouse.click(point["x"], point["y"])
    page.wait_for_selector("#picker-suggestion:not([hidden])")
    assert page.inner_text("#picker-suggestion") == "Suggested: LYT (91 %) · Enter accepts"
    page.keyboard.press("Enter")
    _wait_until_saved(page)
    label = Label.objects.get(cell=cell, round__rater=annotator)
    assert label.node.code == "LYT"
    assert problems == []
