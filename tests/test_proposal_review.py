"""Reviewing proposed cells in the gold round (annotator.screening): accepting one makes a cell
with the examiner's gold label, a rejection is remembered across a re-run of the detector,
accepting all in a view makes unlabelled cells; who may decide, through the API."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from annotator import rounds, screening
from annotator.detection import DETECTOR_VERSION
from annotator.models import Cell, DetectionJob, Label, Membership, ProposedCell, TaxonNode
from core.errors import ConflictError

from .conftest import log_in, new_page
from .test_browser import _screen_point, _wait_until_saved

SPOTS = [(1000, 1000), (1500, 1200), (2000, 2000), (2900, 300)]


def add_proposals(scan, coordinator, spots=SPOTS) -> list[ProposedCell]:
    """A finished detection on the scan proposing a cell at each spot."""
    job = DetectionJob.objects.create(
        scan=scan,
        detector_version=DETECTOR_VERSION,
        status=DetectionJob.Status.DONE,
        created_by=coordinator,
        found_count=len(spots),
        new_count=len(spots),
    )
    return [
        ProposedCell.objects.create(
            scan=scan, job=job, detector_version=DETECTOR_VERSION, x=x, y=y, confidence=0.8
        )
        for x, y in spots
    ]


@pytest.fixture
def proposed(scan, coordinator):
    return add_proposals(scan, coordinator)


def test_accepting_makes_a_cell_with_a_gold_label(api_as, annotator, study, scan, proposed):
    first = proposed[0]
    answer = api_as(annotator).post(
        f"/api/v1/proposals/{first.pk}/accept/",
        {"node": "MON", "seconds_spent": 2.5},
        format="json",
    )
    assert answer.status_code == 201, answer.content
    body = answer.json()
    cell = Cell.objects.get(pk=body["cell"]["id"])
    assert (cell.scan_id, cell.study_id, cell.x, cell.y) == (scan.pk, study.pk, 1000, 1000)
    label = Label.objects.get(pk=body["label"]["id"])
    assert label.cell_id == cell.pk and label.node.code == "MON" and label.rater == annotator
    assert label.round.kind == "gold" and label.round.rater == annotator
    assert label.seconds_spent == 2.5 and label.history.count() == 1
    first.refresh_from_db()
    assert first.status == "accepted" and first.cell_id == cell.pk
    assert first.decided_by == annotator and first.decided_at is not None
    assert body["proposal"]["status"] == "accepted"
    listed = api_as(annotator).get(f"/api/v1/scans/{scan.pk}/proposals/").json()["results"]
    in_reading_order = sorted(proposed[1:], key=lambda p: (p.y, p.x))
    assert [row["id"] for row in listed] == [p.pk for p in in_reading_order]

    again = api_as(annotator).post(
        f"/api/v1/proposals/{first.pk}/accept/", {"node": "MON"}, format="json"
    )
    assert again.status_code == 409 and "accepted already" in again.json()["detail"]
    assert Cell.objects.count() == 1


def test_a_bad_label_makes_no_cell_and_leaves_the_proposal_open(api_as, annotator, proposed):
    answer = api_as(annotator).post(
        f"/api/v1/proposals/{proposed[0].pk}/accept/", {"node": "NOPE"}, format="json"
    )
    assert answer.status_code == 400 and "NOPE" in str(answer.json())
    none = api_as(annotator).post(f"/api/v1/proposals/{proposed[0].pk}/accept/", {}, format="json")
    assert none.status_code == 400 and "node" in str(none.json())
    assert not Cell.objects.exists()
    proposed[0].refresh_from_db()
    assert proposed[0].status == "proposed"


def test_cannot_classify_is_an_answer(api_as, annotator, proposed):
    answer = api_as(annotator).post(
        f"/api/v1/proposals/{proposed[1].pk}/accept/", {"cannot_classify": True}, format="json"
    )
    assert answer.status_code == 201
    assert answer.json()["label"]["cannot_classify"] is True


def test_a_rejection_is_remembered_when_the_detector_runs_again(scan, coordinator, annotator):
    job = screening.run_detection(screening.start_detection(scan, coordinator)[0].pk)
    assert job.status == "done" and job.found_count >= 3
    spots = list(screening.proposals(scan, annotator))
    rejected, accepted = spots[0], spots[1]
    screening.reject_proposal(rejected, annotator)
    screening.accept_proposal(accepted, annotator, node="LYT")

    rerun, created = screening.start_detection(scan, coordinator, rerun=True)
    assert created
    rerun = screening.run_detection(rerun.pk)
    assert rerun.status == "done" and rerun.found_count == job.found_count
    assert rerun.new_count == 0
    rejected.refresh_from_db()
    assert rejected.status == "rejected" and rejected.decided_by == annotator
    still = {p.pk for p in screening.proposals(scan, annotator)}
    assert rejected.pk not in still and accepted.pk not in still
    assert len(still) == job.found_count - 2
    assert Cell.objects.count() == 1
    with pytest.raises(ConflictError, match="rejected already"):
        screening.reject_proposal(rejected, annotator)


def test_reject_through_the_api(api_as, annotator, proposed):
    answer = api_as(annotator).post(f"/api/v1/proposals/{proposed[2].pk}/reject/", format="json")
    assert answer.status_code == 200 and answer.json()["status"] == "rejected"
    twice = api_as(annotator).post(f"/api/v1/proposals/{proposed[2].pk}/reject/", format="json")
    assert twice.status_code == 409 and "rejected already" in twice.json()["detail"]
    accept = api_as(annotator).post(
        f"/api/v1/proposals/{proposed[2].pk}/accept/", {"node": "MON"}, format="json"
    )
    assert accept.status_code == 409
    assert not Cell.objects.exists()


def test_restore_takes_a_rejection_back_and_only_a_rejection(api_as, annotator, proposed):
    target, accepted = proposed[2], proposed[0]
    url = f"/api/v1/proposals/{target.pk}/restore/"
    open_one = api_as(annotator).post(url, format="json")
    assert open_one.status_code == 409
    assert "is proposed, not rejected" in open_one.json()["detail"]
    screening.reject_proposal(target, annotator)
    answer = api_as(annotator).post(url, format="json")
    assert answer.status_code == 200 and answer.json()["status"] == "proposed"
    target.refresh_from_db()
    assert (target.status, target.decided_by, target.decided_at) == ("proposed", None, None)
    listed = api_as(annotator).get(f"/api/v1/scans/{target.scan_id}/proposals/").json()
    assert target.pk in [row["id"] for row in listed["results"]]
    # Proposed again, it is decided like any.
    made = api_as(annotator).post(
        f"/api/v1/proposals/{target.pk}/accept/", {"node": "MON"}, format="json"
    )
    assert made.status_code == 201
    screening.accept_proposal(accepted, annotator, "LYT")
    for decided in (target, accepted):
        again = api_as(annotator).post(f"/api/v1/proposals/{decided.pk}/restore/", format="json")
        assert again.status_code == 409 and "is accepted, not rejected" in again.json()["detail"]
    assert {p.status for p in ProposedCell.objects.filter(pk__in=[target.pk, accepted.pk])} == {
        "accepted"
    }
    assert Cell.objects.count() == 2


def test_who_may_restore_is_who_may_reject(
    api_as, study, scan, proposed, annotator, coordinator, outsider, rater, gold_cells
):
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    target = proposed[1]
    screening.reject_proposal(target, annotator)
    url = f"/api/v1/proposals/{target.pk}/restore/"
    for user in (rater, outsider):
        answer = api_as(user).post(url, format="json")
        assert answer.status_code == 404, (user.username, answer.content)
    refused = api_as(coordinator).post(url, format="json")
    assert refused.status_code == 403 and "annotator" in refused.json()["detail"]
    target.refresh_from_db()
    assert target.status == "rejected"
    Membership.objects.create(study=study, user=coordinator, role=Membership.Role.ANNOTATOR)
    assert api_as(coordinator).post(url, format="json").status_code == 200


def test_accept_all_in_view_makes_unlabelled_cells_of_those_inside(
    api_as, annotator, scan, proposed
):
    screening.reject_proposal(proposed[1], annotator)
    view = {"x0": 900, "y0": 900, "x1": 2000, "y1": 2000}
    answer = api_as(annotator).post(
        f"/api/v1/scans/{scan.pk}/proposals/accept/", view, format="json"
    )
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["accepted"] == 2  # (1000, 1000) and (2000, 2000) on the edge; (1500, 1200) rejected
    cells = Cell.objects.filter(pk__in=[row["cell"] for row in body["cells"]])
    assert [row["proposal"] for row in body["cells"]] == [proposed[0].pk, proposed[2].pk]
    assert sorted((c.x, c.y) for c in cells) == [(1000, 1000), (2000, 2000)]
    assert not Label.objects.exists()
    statuses = {p.pk: p.status for p in ProposedCell.objects.all()}
    assert [statuses[p.pk] for p in proposed] == ["accepted", "rejected", "accepted", "proposed"]
    empty = api_as(annotator).post(
        f"/api/v1/scans/{scan.pk}/proposals/accept/", view, format="json"
    )
    assert empty.json() == {"accepted": 0, "cells": []}
    upside_down = api_as(annotator).post(
        f"/api/v1/scans/{scan.pk}/proposals/accept/",
        {"x0": 10, "y0": 10, "x1": 5, "y1": 20},
        format="json",
    )
    assert upside_down.status_code == 400 and "x1 >= x0" in str(upside_down.json())


def test_who_may_decide(
    api_as, study, scan, proposed, annotator, coordinator, outsider, rater, gold_cells
):
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    target = proposed[0]
    for user in (rater, outsider):
        client = api_as(user)
        for path, body in (
            (f"/api/v1/proposals/{target.pk}/accept/", {"node": "MON"}),
            (f"/api/v1/proposals/{target.pk}/reject/", {}),
            (f"/api/v1/scans/{scan.pk}/proposals/accept/", {"x0": 0, "y0": 0, "x1": 9, "y1": 9}),
        ):
            answer = client.post(path, body, format="json")
            assert answer.status_code == 404, (user.username, path, answer.content)
        assert client.get(f"/api/v1/proposals/{target.pk}/").status_code == 404
    # A coordinator sees the proposals but does not annotate: refused, saying why.
    refused = api_as(coordinator).post(
        f"/api/v1/proposals/{target.pk}/accept/", {"node": "MON"}, format="json"
    )
    assert refused.status_code == 403 and "annotator" in refused.json()["detail"]
    assert api_as(coordinator).post(f"/api/v1/proposals/{target.pk}/reject/").status_code == 403
    target.refresh_from_db()
    assert target.status == "proposed"
    # A coordinator who also annotates there may.
    Membership.objects.create(study=study, user=coordinator, role=Membership.Role.ANNOTATOR)
    allowed = api_as(coordinator).post(
        f"/api/v1/proposals/{target.pk}/accept/", {"node": "MON"}, format="json"
    )
    assert allowed.status_code == 201


@pytest.mark.django_db(transaction=True)
def test_in_the_viewer_a_hotkey_accepts_a_proposal_and_delete_rejects_one(
    chromium_browser, live_server, annotator, coordinator, study, scan, planted
):
    page, problems = new_page(chromium_browser)
    hotkeys = dict(TaxonNode.objects.filter(taxonomy=study.taxonomy).values_list("code", "hotkey"))
    spots = [c for c in planted if hotkeys.get(c["code"])][:3]
    proposed = add_proposals(scan, coordinator, [(c["x"], c["y"]) for c in spots])
    log_in(page, live_server.url, "anna")
    page.click(f"text={scan.original_name}")
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)
    page.wait_for_function("window.cytomark.viewer.world.getItemAt(0).getFullyLoaded()")
    assert page.locator("#proposal-count").inner_text() == "3 proposed"
    assert not page.locator("#accept-in-view").is_disabled()
    screenshots = Path(settings.TEST_RUN_DIR) / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "proposals.png"))

    labelled, rejected = spots[0], spots[1]
    point = _screen_point(page, labelled["x"], labelled["y"])
    page.mouse.click(point["x"], point["y"])
    page.wait_for_selector("#picker:not([hidden])")
    assert "Proposed cell" in page.locator("#picker-title").inner_text()
    page.keyboard.press(hotkeys[labelled["code"]])
    point = _screen_point(page, rejected["x"], rejected["y"])
    page.mouse.click(point["x"], point["y"])
    page.keyboard.press("Delete")
    _wait_until_saved(page)
    assert page.locator("#proposal-count").inner_text() == "1 proposed"

    page.reload()
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)
    shown = page.evaluate(
        """() => Array.from(window.cytomark.cells.values()).map(c => ({
            x: c.x, y: c.y, id: c.id, proposal: c.proposal ?? null,
            code: c.label && c.label.node}))"""
    )
    by_spot = {(s["x"], s["y"]): s for s in shown}
    assert len(shown) == 2
    marker = by_spot[(labelled["x"], labelled["y"])]
    assert marker["proposal"] is None and marker["code"] == labelled["code"]
    assert (rejected["x"], rejected["y"]) not in by_spot
    assert by_spot[(spots[2]["x"], spots[2]["y"])]["proposal"] == proposed[2].pk
    assert page.locator("#cell-list li.proposal").count() == 1

    cell = Cell.objects.get(scan=scan)
    assert cell.pk == marker["id"] and cell.labels.get().node.code == labelled["code"]
    statuses = [p.status for p in ProposedCell.objects.filter(pk__in=[p.pk for p in proposed])]
    assert sorted(statuses) == ["accepted", "proposed", "rejected"]
    assert problems == []


def test_the_study_named_must_hold_the_scan_and_is_needed_where_two_could(
    api_as, annotator, scan, proposed, outsider
):
    elsewhere = Membership.objects.get(user=outsider).study
    Membership.objects.create(study=elsewhere, user=annotator, role=Membership.Role.ANNOTATOR)
    url = f"/api/v1/proposals/{proposed[0].pk}/accept/"
    wrong = api_as(annotator).post(url, {"node": "MON", "study": "elsewhere"}, format="json")
    assert wrong.status_code == 400 and "not part of study elsewhere" in str(wrong.json())
    elsewhere.scans.add(scan)
    open_choice = api_as(annotator).post(url, {"node": "MON"}, format="json")
    assert open_choice.status_code == 400 and "several studies" in str(open_choice.json())
    assert not Cell.objects.exists()
    chosen = api_as(annotator).post(url, {"node": "MON", "study": "elsewhere"}, format="json")
    assert chosen.status_code == 201
    assert Cell.objects.get().study == elsewhere
