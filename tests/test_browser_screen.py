"""The annotation screen's picker, walk and keys in real headless Chromium.

Cells are made at known level-0 points of the synthetic scan (3000 x 2400 px) and the viewer is
set to one screen pixel per scan pixel, so that where they lie on the screen is known: the picker
opens beside the selected cell over none of the others, a press that did not begin on the picker
labels nothing, "next unlabelled" walks to the nearest cell, Backspace never deletes, and the
keyboard focus moves with Tab to the cell list, where Enter selects a cell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from annotator.models import Cell, Label

from .conftest import log_in, new_page
from .test_browser import _screen_point, _wait_until_saved

pytestmark = pytest.mark.django_db(transaction=True)

CENTRE = (1500, 1200)
# Screen pixels per scan pixel: markers of about 24 px radius on this scan (0.1 µm/px).
SCALE = 0.4


@pytest.fixture
def chromium(chromium_browser):
    return new_page(chromium_browser)


def _cells(study, scan, offsets) -> list[Cell]:
    """Cells at these screen-pixel offsets from CENTRE, made in this order (their ids follow it)."""
    return [
        Cell.objects.create(
            study=study, scan=scan, x=CENTRE[0] + round(dx / SCALE), y=CENTRE[1] + round(dy / SCALE)
        )
        for dx, dy in offsets
    ]


def _open(page, live_server, scan, at=CENTRE) -> None:
    """The screen at SCALE screen pixels per scan pixel, the level-0 point `at` in the middle."""
    log_in(page, live_server.url, "anna")
    page.click(f"text={scan.original_name}")
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)
    page.evaluate(
        """([x, y, scale]) => {
            const viewport = window.cytomark.viewer.viewport;
            viewport.zoomTo(viewport.imageToViewportZoom(scale), null, true);
            viewport.panTo(viewport.imageToViewportCoordinates(x, y), true);
        }""",
        [*at, SCALE],
    )
    page.wait_for_timeout(300)


def _click_cell(page, cell: Cell) -> None:
    point = _screen_point(page, cell.x, cell.y)
    page.mouse.click(point["x"], point["y"])
    _wait_for_picker_on(page, cell.pk)


def _wait_for_picker_on(page, cell_id: int) -> None:
    page.wait_for_function(
        "id => document.getElementById('picker-title').textContent.startsWith('Cell #' + id + ' ')",
        arg=cell_id,
    )


def _selected(page) -> int | None:
    """The id of the selected cell, as the cell list marks it."""
    text = page.evaluate(
        "() => { const li = document.querySelector('#cell-list li.selected'); "
        "return li ? li.textContent : null; }"
    )
    return int(text.split()[0].lstrip("#")) if text else None


def _box(page, selector: str) -> dict:
    return page.eval_on_selector(
        selector,
        "e => { const r = e.getBoundingClientRect(); "
        "return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; }",
    )


def _middle(box: dict) -> dict:
    return {"x": (box["left"] + box["right"]) / 2, "y": (box["top"] + box["bottom"]) / 2}


def _marker_box(page, cell: Cell) -> dict:
    point = _screen_point(page, cell.x, cell.y)
    radius = page.evaluate("window.cytomark.markerRadius()")
    return {
        "left": point["x"] - radius,
        "top": point["y"] - radius,
        "right": point["x"] + radius,
        "bottom": point["y"] + radius,
    }


def _intersect(a: dict, b: dict) -> bool:
    return (
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and a["top"] < b["bottom"]
        and b["top"] < a["bottom"]
    )


def _wait_for_picker_to_settle(page) -> None:
    page.wait_for_timeout(600)


def test_the_picker_opens_beside_the_cell_over_no_other_marker_and_the_slide_under_it_works(
    chromium, live_server, annotator, study, scan
):
    page, problems = chromium
    # A cluster to the right of the cell (where the picker used to open) and one cell up left.
    selected, right, upper_right, lower_right, upper_left = _cells(
        study, scan, [(0, 0), (90, 0), (160, -120), (220, 140), (-120, -300)]
    )
    others = [right, upper_right, lower_right, upper_left]
    _open(page, live_server, scan)
    _click_cell(page, selected)
    picker = _box(page, "#picker")
    assert picker["right"] - picker["left"] > 250 and picker["bottom"] - picker["top"] > 300
    assert not _intersect(picker, _marker_box(page, selected))
    for cell in others:
        assert not _intersect(picker, _marker_box(page, cell)), (cell.x - CENTRE[0], picker)
    viewer = _box(page, "#viewer")
    assert viewer["left"] <= picker["left"] and picker["right"] <= viewer["right"]
    assert viewer["top"] <= picker["top"] and picker["bottom"] <= viewer["bottom"]
    screenshots = Path(settings.TEST_RUN_DIR) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "picker-placement.png"))

    # A click on the slide where the picker used to open selects the cell there, labels none.
    _wait_for_picker_to_settle(page)
    _click_cell(page, right)
    assert _selected(page) == right.pk
    _wait_until_saved(page)
    assert Label.objects.count() == 0
    assert Cell.objects.count() == 5
    assert problems == []


def test_a_picker_button_takes_only_a_press_that_began_on_it_once_it_stood_still(
    chromium, live_server, annotator, study, scan
):
    page, problems = chromium
    first, second = _cells(study, scan, [(0, 0), (60, 250)])
    _open(page, live_server, scan)
    _click_cell(page, first)
    _wait_for_picker_to_settle(page)
    target = _middle(_box(page, "#picker button.leaf[data-code=LYT]"))

    # Pressed on the slide, released over the button (the view held still): no label, no cell.
    page.evaluate("() => { const v = cytomark.viewer; v.panHorizontal = v.panVertical = false; }")
    empty = _screen_point(page, CENTRE[0] - round(300 / SCALE), CENTRE[1] + round(200 / SCALE))
    page.mouse.move(empty["x"], empty["y"])
    page.mouse.down()
    page.mouse.move(target["x"], target["y"], steps=5)
    page.mouse.up()
    # Pressed on the button, released over the slide: no label, no cell either.
    page.mouse.move(target["x"], target["y"])
    page.mouse.down()
    page.mouse.move(empty["x"], empty["y"], steps=5)
    page.mouse.up()
    page.wait_for_timeout(300)
    _wait_until_saved(page)
    assert Label.objects.count() == 0
    assert Cell.objects.count() == 2

    # Labelling by hotkey moves the picker to the next cell; a click that lands on it at once
    # was aimed at the slide, and labels nothing; once it stood still, the click labels.
    page.keyboard.press("l")
    _wait_for_picker_on(page, second.pk)
    at = _middle(_box(page, "#picker button.leaf[data-code=MON]"))
    page.mouse.click(at["x"], at["y"])
    page.wait_for_timeout(200)
    _wait_until_saved(page)
    assert list(Label.objects.values_list("cell_id", "node__code")) == [(first.pk, "LYT")]
    _wait_for_picker_to_settle(page)
    page.mouse.click(at["x"], at["y"])
    _wait_until_saved(page)
    assert sorted(Label.objects.values_list("cell_id", "node__code")) == [
        (first.pk, "LYT"),
        (second.pk, "MON"),
    ]
    assert problems == []


def test_next_unlabelled_walks_to_the_nearest_cell_and_brings_it_into_view(
    chromium, live_server, annotator, study, scan
):
    page, problems = chromium
    # Made (so numbered) top right, top left, then near the first: by id the walk would cross
    # the whole scan at once.
    top_right, top_left, near, nearer_centre, middle = (
        Cell.objects.create(study=study, scan=scan, x=x, y=y)
        for x, y in [(2900, 100), (100, 100), (2700, 300), (2400, 200), (1500, 1200)]
    )
    _open(page, live_server, scan, at=(2900, 100))
    _click_cell(page, top_right)
    visited = [_selected(page)]
    for _ in range(4):
        page.keyboard.press("Space")
        page.wait_for_function(
            "before => !document.getElementById('picker-title').textContent"
            ".startsWith('Cell #' + before + ' ')",
            arg=visited[-1],
        )
        visited.append(_selected(page))
        page.wait_for_timeout(800)  # the pan's animation
        cell = Cell.objects.get(pk=visited[-1])
        point = _screen_point(page, cell.x, cell.y)
        viewer = _box(page, "#viewer")
        assert viewer["left"] < point["x"] < viewer["right"], cell
        assert viewer["top"] < point["y"] < viewer["bottom"], cell
    assert visited == [top_right.pk, near.pk, nearer_centre.pk, middle.pk, top_left.pk]

    # A hotkey labels and moves on the same way: from the top left the nearest is the middle.
    page.keyboard.press("l")
    _wait_for_picker_on(page, middle.pk)
    _wait_until_saved(page)
    assert list(Label.objects.values_list("cell_id", flat=True)) == [top_left.pk]
    assert problems == []


def test_backspace_never_deletes_delete_does_and_is_undone_from_its_message(
    chromium, live_server, annotator, study, scan
):
    page, problems = chromium
    first, second = _cells(study, scan, [(0, 0), (200, 0)])
    _open(page, live_server, scan)
    _click_cell(page, second)
    page.keyboard.press("Backspace")
    assert _selected(page) == first.pk, "Backspace goes to the previous cell"
    _wait_until_saved(page)
    assert Cell.objects.count() == 2

    page.keyboard.press("Delete")
    page.wait_for_selector("#toast:not([hidden])")
    assert f"Cell #{first.pk} deleted." in page.inner_text("#toast")
    _wait_until_saved(page)
    assert list(Cell.objects.values_list("pk", flat=True)) == [second.pk]
    page.click("#toast button")
    _wait_until_saved(page)
    assert Cell.objects.count() == 2
    restored = Cell.objects.exclude(pk=second.pk).get()
    assert (restored.x, restored.y) == (first.x, first.y)

    help_text = page.eval_on_selector("#key-help", "e => e.textContent")
    assert "Backspaceprevious cell in the list" in help_text
    assert "Deletedelete the selected cell" in help_text
    assert problems == []


def test_tab_moves_the_focus_to_a_cell_in_the_list_and_enter_selects_it(
    chromium, live_server, annotator, study, scan
):
    page, problems = chromium
    first, second, third = _cells(study, scan, [(0, 0), (150, 0), (0, 150)])
    _open(page, live_server, scan)
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate("document.getElementById('cell-list').contains(document.activeElement)"):
            break
    else:
        pytest.fail("Tab never reached the cell list")
    page.keyboard.press("Tab")  # the second cell of the list
    focused = int(page.evaluate("document.activeElement.dataset.key"))
    page.keyboard.press("Enter")
    page.wait_for_selector("#picker:not([hidden])")
    assert _selected(page) == second.pk
    assert page.evaluate("document.activeElement.dataset.key") == str(focused), "focus stays"
    # Space on a focused cell presses it (it does not mean "next unlabelled" there).
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Space")
    assert _selected(page) == first.pk
    # Clicked with the mouse, a cell of the list keeps no focus: Space then means next unlabelled.
    page.click("#cell-list li:nth-child(3) button")
    assert _selected(page) == third.pk
    assert page.evaluate("document.activeElement.tagName") != "BUTTON"
    page.keyboard.press("Space")
    assert _selected(page) == first.pk

    # Letters typed in the picker's search are text, not hotkeys.
    _wait_for_picker_to_settle(page)
    page.click("#picker-search")
    page.keyboard.type("lym")
    assert page.input_value("#picker-search") == "lym"
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    _wait_until_saved(page)
    assert Label.objects.count() == 0
    assert Cell.objects.count() == 3
    assert problems == []


# True once the viewer has stopped moving and every tile its view needs at the sharp level is
# drawn (OpenSeadragon's TiledImage.getFullyLoaded()).
SHARP = """() => {
    const viewer = window.cytomark.viewer;
    const item = viewer.world.getItemAt(0);
    const viewport = viewer.viewport;
    return !!item && item.getFullyLoaded()
        && viewport.getZoom(true) === viewport.getZoom(false)
        && viewport.getCenter(true).equals(viewport.getCenter(false));
}"""


def test_the_viewer_opens_the_scan_sharp_with_the_tuned_tile_loading_options(
    chromium, live_server, annotator, study, scan
):
    page, problems = chromium
    tiles: list[tuple[str, int]] = []
    page.on(
        "response",
        lambda response: (
            tiles.append((response.url, response.status))
            if response.request.resource_type == "image" and "/static/" not in response.url
            else None
        ),
    )
    log_in(page, live_server.url, "anna")
    page.click(f"text={scan.original_name}")
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)
    page.wait_for_function(SHARP, timeout=30000)
    first_screen = len(tiles)

    # The viewer runs with every option of lib/viewer-options.js, each one OpenSeadragon knows
    # (a misspelt name would be ignored without a word).
    options = page.evaluate(
        """async () => {
            const entry = document.querySelector("script[type=module][src*='annotate']").src;
            const { TILE_LOADING } = await import(new URL("lib/viewer-options.js", entry));
            const viewer = window.cytomark.viewer;
            return Object.entries(TILE_LOADING).map(([name, value]) => ({
                name, value, held: viewer[name], known: name in OpenSeadragon.DEFAULT_SETTINGS,
            }));
        }"""
    )
    assert {option["name"] for option in options} >= {"maxTilesPerFrame", "immediateRender"}
    for option in options:
        assert option["known"], f"OpenSeadragon has no option {option['name']}"
        assert option["held"] == option["value"], option

    # Zoomed in to full resolution, the new screen gets sharp too, from tiles of the finest level.
    page.evaluate(
        """([x, y]) => {
            const viewer = window.cytomark.viewer;
            const viewport = viewer.viewport;
            // The flag stays true until the next frame finds tiles missing: wait for the event.
            window.sharpAgain = false;
            viewer.world.getItemAt(0).addHandler("fully-loaded-change", (event) => {
                if (event.fullyLoaded) window.sharpAgain = true;
            });
            viewport.zoomTo(viewport.imageToViewportZoom(1), null, true);
            viewport.panTo(viewport.imageToViewportCoordinates(x, y), true);
        }""",
        list(CENTRE),
    )
    page.wait_for_function("window.sharpAgain", timeout=30000)
    page.wait_for_function(SHARP, timeout=30000)
    finest = page.evaluate("window.cytomark.viewer.world.getItemAt(0).source.maxLevel")
    zoomed = tiles[first_screen:]
    assert zoomed and any(f"/{finest}/" in url for url, _ in zoomed), zoomed
    assert first_screen > 0 and {status for _, status in tiles} == {200}, tiles
    assert problems == []
