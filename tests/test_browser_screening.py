"""Whole-smear screening end to end, in headless Chromium with a real Celery worker: on a
synthetic scan a coordinator who annotates clicks Find cells, the worker detects, the proposals
appear without a reload; one is accepted by hotkey, one rejected, taken back with Undo reject
and rejected again, another rejected and taken back with Ctrl+Z, the proposals of a zoomed-in
view accepted at once; after a reload the screen and the database agree on all of it. And a
coordinator who does not annotate starts detection from the studies page and follows it there."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from annotator.models import Cell, DetectionJob, Membership, ProposedCell, TaxonNode

from .conftest import log_in, new_page
from .test_browser import _screen_point, _wait_until_saved
from .workers import celery_worker, purge_queues

# Half the side of the zoomed-in view, in level-0 pixels.
VIEW_HALF_PX = 400

SHOWN = """() => Array.from(window.cytomark.cells.values()).map(c => ({
    x: c.x, y: c.y, id: c.id, proposal: c.proposal ?? null,
    code: c.label ? (c.label.node || "cannot") : null}))"""


def _settle(page) -> None:
    """Until the viewer's pan or zoom animation (after a selection, say) has ended."""
    page.wait_for_function(
        """() => {
            const viewport = window.cytomark.viewer.viewport;
            return viewport.getCenter(true).squaredDistanceTo(viewport.getCenter(false)) < 1e-12
                && Math.abs(viewport.getZoom(true) - viewport.getZoom(false)) < 1e-9;
        }"""
    )


def _select(page, proposal: ProposedCell) -> None:
    """Click the proposal's marker and wait for the picker to name it a proposed cell."""
    _settle(page)
    point = _screen_point(page, proposal.x, proposal.y)
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function(
        "document.querySelector('#picker-title').textContent.startsWith('Proposed cell')"
    )


def _proposed_count(page) -> int:
    return int(page.locator("#proposal-count").inner_text().split()[0])


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_find_cells_review_them_and_reload(
    chromium_browser, live_server, study, scan, coordinator, settings
):
    Membership.objects.create(study=study, user=coordinator, role=Membership.Role.ANNOTATOR)
    leaves = TaxonNode.objects.filter(taxonomy=study.taxonomy, is_leaf=True).exclude(hotkey="")
    code, key = leaves.order_by("code").values_list("code", "hotkey").first()
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, coordinator.username)
    try:
        _review(page, live_server, study, scan, settings, code, key)
    finally:
        purge_queues(["tiles"])  # the patch cutting the accepted label queued: no worker left
    assert problems == []


def _review(page, live_server, study, scan, settings, code: str, key: str) -> None:
    with celery_worker(["tiles"], Path(settings.MEDIA_ROOT)):
        page.goto(f"{live_server.url}/studies/{study.name}/scans/{scan.pk}/")
        page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)
        assert page.locator("#proposals").is_visible() and _proposed_count(page) == 0
        page.click("#find-cells")
        page.wait_for_selector("#detection-status[data-status='done']", timeout=60000)
    job = DetectionJob.objects.get(scan=scan)
    assert job.status == "done" and job.found_count > 8, job.error
    assert f"{job.found_count} cells found" in page.inner_text("#detection-status")
    # Drawn without a reload, once the page has loaded them.
    page.wait_for_function(
        f"document.querySelector('#proposal-count').textContent === '{job.found_count} proposed'",
        timeout=15000,
    )
    page.wait_for_function("window.cytomark.viewer.world.getItemAt(0).getFullyLoaded()")

    proposals = list(ProposedCell.objects.filter(job=job))
    in_view_centre = proposals[0]
    # The proposals decided one by one: the three farthest from the zoomed-in view.
    accepted, rejected, restored = sorted(
        proposals[1:],
        key=lambda p: -math.dist((p.x, p.y), (in_view_centre.x, in_view_centre.y)),
    )[:3]

    _select(page, accepted)
    page.keyboard.press(key)
    _select(page, rejected)
    page.keyboard.press("Delete")
    assert _proposed_count(page) == job.found_count - 2
    assert page.is_enabled("#undo-reject")
    page.click("#undo-reject")  # the last rejection comes back, selected
    assert _proposed_count(page) == job.found_count - 1
    assert "Proposed cell" in page.inner_text("#picker-title")
    assert page.is_disabled("#undo-reject")
    page.keyboard.press("Delete")  # rejected again
    _select(page, restored)
    page.keyboard.press("Delete")
    page.keyboard.press("Control+z")
    assert _proposed_count(page) == job.found_count - 2
    _wait_until_saved(page)

    # Zoom in on one proposal, then accept every proposal the view shows.
    _settle(page)
    page.evaluate(
        """([x, y, half]) => {
            const viewport = window.cytomark.viewer.viewport;
            viewport.fitBounds(viewport.imageToViewportRectangle(
                x - half, y - half, 2 * half, 2 * half), true);
        }""",
        [in_view_centre.x, in_view_centre.y, VIEW_HALF_PX],
    )
    _settle(page)
    in_view = page.evaluate(
        """() => {
            const viewport = window.cytomark.viewer.viewport;
            const bounds = viewport.getBounds(true);
            const a = viewport.viewportToImageCoordinates(bounds.getTopLeft());
            const b = viewport.viewportToImageCoordinates(bounds.getBottomRight());
            return Array.from(window.cytomark.cells.values())
                .filter(c => c.proposal != null && c.x >= a.x && c.x <= b.x
                    && c.y >= a.y && c.y <= b.y)
                .map(c => c.proposal);
        }"""
    )
    assert in_view_centre.pk in in_view
    assert not {accepted.pk, rejected.pk, restored.pk} & set(in_view)
    assert len(in_view) < job.found_count - 2, "the view shows only part of the scan"
    page.click("#accept-in-view")
    _wait_until_saved(page)
    assert _proposed_count(page) == job.found_count - 2 - len(in_view)

    page.reload()
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)
    shown = page.evaluate(SHOWN)
    left = job.found_count - 2 - len(in_view)
    assert _proposed_count(page) == left and page.is_disabled("#undo-reject")
    by_spot = {(c["x"], c["y"]): c for c in shown}
    assert len(shown) == job.found_count - 1  # every proposal but the rejected one
    assert (rejected.x, rejected.y) not in by_spot
    assert by_spot[(restored.x, restored.y)]["proposal"] == restored.pk
    labelled = by_spot[(accepted.x, accepted.y)]
    assert labelled["proposal"] is None and labelled["code"] == code
    unlabelled = [c for c in shown if c["proposal"] is None and c["code"] is None]
    assert len(unlabelled) == len(in_view)

    stored = {p.pk: p for p in ProposedCell.objects.filter(job=job)}
    assert stored[accepted.pk].status == "accepted"
    assert stored[rejected.pk].status == "rejected"
    assert stored[restored.pk].status == "proposed" and stored[restored.pk].decided_by is None
    assert all(stored[pk].status == "accepted" and stored[pk].cell_id for pk in in_view)
    assert sum(p.status == "proposed" for p in stored.values()) == left
    cells = Cell.objects.filter(scan=scan)
    assert cells.count() == 1 + len(in_view)
    cell = cells.get(pk=stored[accepted.pk].cell_id)
    assert cell.pk == labelled["id"] and cell.labels.get().node.code == code
    assert not Cell.objects.filter(labels__isnull=False).exclude(pk=cell.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_coordinator_who_does_not_annotate_finds_cells_from_the_studies_page(
    chromium_browser, live_server, study, scan, coordinator
):
    """No worker here: the job's states are written by the test, the row follows them."""
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, coordinator.username)
    row = f"td.detection[data-scan='{scan.pk}']"
    try:
        page.goto(f"{live_server.url}/")
        assert page.inner_text(f"{row} .detection-status") == "No detection yet."
        page.click(f"{row} .find-cells")
        page.wait_for_selector(f"{row} .detection-status[data-status='queued']", timeout=15000)
        job = DetectionJob.objects.get(scan=scan)
        assert job.created_by == coordinator and page.is_disabled(f"{row} .find-cells")
        DetectionJob.objects.filter(pk=job.pk).update(
            status="running", progress={"tiles_done": 3, "tiles": 12}
        )
        page.wait_for_function(
            f'document.querySelector("{row} .detection-status").textContent'
            ".includes('25 % (3 of 12 tiles)')",
            timeout=15000,
        )
        DetectionJob.objects.filter(pk=job.pk).update(status="done", found_count=19, new_count=19)
        page.wait_for_selector(f"{row} .detection-status[data-status='done']", timeout=15000)
        assert "19 cells found" in page.inner_text(f"{row} .detection-status")
        assert page.is_enabled(f"{row} .find-cells")
        page.reload()
        assert "19 cells found" in page.inner_text(f"{row} .detection-status")
        DetectionJob.objects.create(
            scan=scan,
            detector_version="other-1",
            status="failed",
            error="an older detector",
        )
        DetectionJob.objects.filter(pk=job.pk).update(status="failed", error="x.tiff: unreadable")
        page.reload()
        assert page.inner_text(f"{row} .detection-status") == "Failed: x.tiff: unreadable"
    finally:
        purge_queues(["tiles"])  # the task the click queued: no worker runs it here
    assert problems == []
