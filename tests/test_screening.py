"""Detection as a job (annotator.screening): the detect_cells command, one job per scan and
detector version, who may start, watch, cancel and read it through the API, and a real Celery
worker running it to the end, cancelled in the middle, and killed in the middle."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import resolve

from annotator import annotation, detection, rounds, screening
from annotator import tasks as annotator_tasks
from annotator.models import Cell, DetectionJob, Membership, ProposedCell
from annotator.scans import ingest_scan
from core.errors import NotFoundError

from .conftest import label_planted_cells, log_in, new_page
from .test_frontend import fill, page_config
from .test_job_recovery import wait_until
from .workers import celery_worker, purge_queues, start_worker, stop_worker

MATCH_UM = 5.0
# Tiny tiles: a detection of the small test scan takes about 120 tiles and a second or two, so
# that a worker can be caught in the middle of one.
SLOW_TILES = {"DETECTION_TILE_PX": "32"}


def recall(found: list[dict], planted: list[dict], mpp: float) -> float:
    """The share of planted leukocytes with a proposal within MATCH_UM of their centre."""
    limit = MATCH_UM / mpp
    matched = sum(
        any(math.dist((p["x"], p["y"]), (f["x"], f["y"])) <= limit for f in found) for p in planted
    )
    return matched / len(planted)


def wait_running(job: DetectionJob) -> None:
    """Until a worker has read at least one tile of the job."""
    wait_until(
        lambda: DetectionJob.objects.filter(
            pk=job.pk, status="running", progress__tiles_done__gt=0
        ).exists(),
        30,
        f"detection {job.pk} under way",
    )


def wait_ended(job: DetectionJob) -> DetectionJob:
    return wait_until(
        lambda: DetectionJob.objects.filter(pk=job.pk, status__in=["done", "failed"]).first(),
        60,
        f"detection {job.pk} ended",
    )


def test_the_command_stores_proposals_not_cells_and_writes_them_as_json(
    scan, planted, tmp_path, capsys
):
    out = tmp_path / "proposals.json"
    call_command("detect_cells", "--scan", str(scan.pk), "--out", str(out))
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert rows and all(set(row) == {"x", "y", "confidence"} for row in rows)
    assert all(0 <= r["x"] < scan.width and 0 <= r["y"] < scan.height for r in rows)
    assert all(0.0 < r["confidence"] <= 1.0 for r in rows)
    assert recall(rows, planted, scan.mpp_x) >= 0.9
    assert len(rows) <= len(planted) + 2  # one per leukocyte, not a sprinkling
    job = DetectionJob.objects.get(scan=scan)
    assert job.status == "done" and job.detector_version == detection.DETECTOR_VERSION
    assert job.found_count == job.new_count == len(rows) == ProposedCell.objects.count()
    assert f"{len(rows)} found" in printed and " s " in printed
    assert not Cell.objects.exists()

    call_command("detect_cells", "--scan", str(scan.pk))
    assert "nothing detected again" in capsys.readouterr().out
    assert DetectionJob.objects.count() == 1 and ProposedCell.objects.count() == len(rows)


def test_cells_clicked_before_detection_are_not_proposed_again(
    study, scan, planted, annotator, coordinator
):
    clicked = [spot for spot in planted if spot["code"] in ("NGS", "LYT", "MON", "EOS")][:3]
    others = [spot for spot in planted if spot not in clicked]
    # An examiner's click lies on the cell, a little off its nucleus's centre.
    for spot in clicked:
        annotation.create_cell(study, scan, spot["x"] + 4, spot["y"] - 3, annotator)
    job = screening.run_detection(screening.start_detection(scan, coordinator)[0].pk)
    assert job.status == "done"
    proposed = list(ProposedCell.objects.filter(scan=scan).values("x", "y"))
    assert recall(proposed, clicked, scan.mpp_x) == 0  # none of the clicked cells again
    assert recall(proposed, others, scan.mpp_x) >= 0.9  # the others all proposed
    assert job.found_count - job.new_count == len(clicked) and job.new_count == len(proposed)


def test_an_unknown_scan_stops_the_command_with_a_message(db):
    with pytest.raises(CommandError, match="No scan 999"):
        call_command("detect_cells", "--scan", "999")


def test_one_job_per_scan_and_version_and_a_rerun_keeps_rejections(scan, coordinator):
    job, created = screening.start_detection(scan, coordinator)
    assert created
    assert screening.start_detection(scan, coordinator) == (job, False)  # queued: that one
    job = screening.run_detection(job.pk)
    assert job.status == "done" and job.found_count > 2
    assert screening.start_detection(scan, coordinator) == (job, False)  # done: that one
    assert screening.run_detection(job.pk).attempts == 1  # delivered twice: detects once

    rejected = ProposedCell.objects.filter(scan=scan).first()
    ProposedCell.objects.filter(pk=rejected.pk).update(status="rejected")
    again, created = screening.start_detection(scan, coordinator, rerun=True)
    assert created and again != job
    again = screening.run_detection(again.pk)
    assert again.status == "done" and again.found_count == job.found_count
    assert again.new_count == 0  # the same spots: nothing new, the rejected one not back
    assert ProposedCell.objects.get(pk=rejected.pk).status == "rejected"
    shown = screening.proposals(scan, coordinator)
    assert shown.count() == job.found_count - 1 and rejected not in shown


def test_a_cancelled_job_writes_nothing_and_asking_again_starts_a_new_one(scan, coordinator):
    job, _ = screening.start_detection(scan, coordinator)
    screening.cancel_detection(job, coordinator)
    assert screening.run_detection(job.pk).status == "cancelled"
    assert not ProposedCell.objects.exists()
    again, created = screening.start_detection(scan, coordinator)
    assert created and again.pk != job.pk
    DetectionJob.objects.filter(pk=again.pk).delete()  # as when its scan is deleted
    assert annotator_tasks.detect_cells(again.pk) == "gone"


def test_who_may_start_watch_cancel_and_read_a_detection(
    api_as, scan, coordinator, annotator, outsider
):
    url = f"/api/v1/scans/{scan.pk}/detect/"
    refused = api_as(annotator).post(url, {}, format="json")
    assert refused.status_code == 403
    assert "coordinators and admins" in refused.json()["detail"]
    assert api_as(outsider).post(url, {}, format="json").status_code == 404
    assert not DetectionJob.objects.exists()

    started = api_as(coordinator).post(url, {}, format="json")
    assert started.status_code == 202, started.content
    job = started.json()
    assert job["status"] == "queued" and job["detector_version"] == detection.DETECTOR_VERSION
    again = api_as(coordinator).post(url, {}, format="json")
    assert again.status_code == 200 and again.json()["id"] == job["id"]

    job_url = f"/api/v1/detection-jobs/{job['id']}/"
    assert api_as(annotator).get(job_url).json()["status"] == "queued"
    assert api_as(outsider).get(job_url).status_code == 404
    assert api_as(annotator).post(job_url + "cancel/").status_code == 403
    cancelled = api_as(coordinator).post(job_url + "cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    twice = api_as(coordinator).post(job_url + "cancel/")
    assert twice.status_code == 400 and "nothing to cancel" in twice.json()["detail"]

    screening.run_detection(screening.start_detection(scan, coordinator)[0].pk)
    listed = api_as(annotator).get(f"/api/v1/scans/{scan.pk}/proposals/")
    assert listed.status_code == 200
    body = listed.json()
    assert body["count"] == ProposedCell.objects.count() > 0
    assert {"x", "y", "confidence", "status"} <= set(body["results"][0])
    assert api_as(outsider).get(f"/api/v1/scans/{scan.pk}/proposals/").status_code == 404


def test_a_rater_of_a_blinded_round_sees_no_proposal_nor_detection(
    api_as, study, scan, planted, annotator, coordinator, rater
):
    job = screening.run_detection(screening.start_detection(scan, coordinator)[0].pk)
    assert api_as(rater).get(f"/api/v1/scans/{scan.pk}/proposals/").json()["count"] > 0
    label_planted_cells(study, scan, annotator, planted)  # the gold cells the round draws
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r-blind")
    assert api_as(rater).get(f"/api/v1/scans/{scan.pk}/proposals/").status_code == 404
    assert api_as(rater).get(f"/api/v1/detection-jobs/{job.pk}/").status_code == 404
    assert api_as(rater).post(f"/api/v1/scans/{scan.pk}/detect/").status_code == 404
    with pytest.raises(NotFoundError):
        screening.proposals(scan, rater)


def test_a_scan_whose_file_cannot_be_read_is_refused_with_its_name(
    api_as, study, coordinator, synthetic_scan_files
):
    path, _ = synthetic_scan_files[1]
    scan = ingest_scan(path, study=study, user=coordinator).scan
    Path(scan.file.path).write_bytes(b"not a scan any more")
    answer = api_as(coordinator).post(f"/api/v1/scans/{scan.pk}/detect/", {}, format="json")
    assert answer.status_code == 400
    assert scan.original_name in answer.json()["scan"][0]
    assert not DetectionJob.objects.exists()


def test_the_scan_page_offers_find_cells_to_coordinators_only(
    client, study, scan, coordinator, annotator
):
    """The scan page is the gold round's: a coordinator who also annotates sees the button."""
    Membership.objects.create(study=study, user=coordinator, role=Membership.Role.ANNOTATOR)
    page = f"/studies/{study.name}/scans/{scan.pk}/"
    client.force_login(coordinator)
    job = screening.run_detection(screening.start_detection(scan, coordinator)[0].pk)
    shown = client.get(page)
    assert 'id="find-cells"' in shown.content.decode()
    detecting = page_config(shown, "annotate-config")["detection"]
    assert resolve(detecting["urls"]["detect"]).url_name == "scan-detect"
    assert resolve(fill(detecting["urls"]["job"], id=job.pk)).url_name == "detection-job-detail"
    assert detecting["last"]["id"] == job.pk and detecting["last"]["status"] == "done"
    client.force_login(annotator)
    plain = client.get(page)
    assert 'id="find-cells"' not in plain.content.decode()
    assert "detection" not in page_config(plain, "annotate-config")


def test_the_studies_page_offers_find_cells_per_scan_to_its_coordinators_only(
    client, study, scan, coordinator, annotator, data_scientist, outsider
):
    """A coordinator who does not annotate cannot open the viewer: the studies page's scan
    table gives each scan its Find cells button and its last detection instead."""
    job = screening.run_detection(screening.start_detection(scan, coordinator)[0].pk)
    client.force_login(coordinator)
    shown = client.get("/")
    html = shown.content.decode()
    assert f'<td class="detection" data-scan="{scan.pk}">' in html and 'class="find-cells"' in html
    config = page_config(shown, "home-config")
    assert config["detections"][str(scan.pk)]["id"] == job.pk
    assert config["detections"][str(scan.pk)]["status"] == "done"
    assert resolve(fill(config["urls"]["detect"], id=scan.pk)).url_name == "scan-detect"
    assert resolve(fill(config["urls"]["job"], id=job.pk)).url_name == "detection-job-detail"
    assert client.get(f"/studies/{study.name}/scans/{scan.pk}/").status_code == 403
    elsewhere = Membership.objects.get(user=outsider).study
    Membership.objects.create(study=elsewhere, user=outsider, role=Membership.Role.COORDINATOR)
    for user in (annotator, data_scientist, outsider):
        client.force_login(user)
        plain = client.get("/")
        assert 'class="find-cells"' not in plain.content.decode(), user.username
        assert page_config(plain, "home-config")["detections"] == {}, user.username


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_worker_detects_to_the_end_and_stops_a_cancelled_job(
    study, scan, coordinator, synthetic_scan_files, settings
):
    media = Path(settings.MEDIA_ROOT)
    other = ingest_scan(synthetic_scan_files[1][0], study=study, user=coordinator).scan
    with celery_worker(["tiles"], media, SLOW_TILES):
        job, _ = screening.start_detection(scan, coordinator)
        annotator_tasks.detect_cells.delay(job.pk)
        done = wait_ended(job)
        assert done.status == "done", done.error
        assert done.progress["tiles_done"] == done.progress["tiles"] > 50
        assert ProposedCell.objects.filter(job=done).count() == done.found_count > 2

        stopped, _ = screening.start_detection(other, coordinator)
        annotator_tasks.detect_cells.delay(stopped.pk)
        wait_running(stopped)
        screening.cancel_detection(stopped, coordinator)
        time.sleep(1.5)  # longer than the rest of that detection would take
    stopped.refresh_from_db()
    assert stopped.status == "cancelled" and stopped.finished_at is not None
    assert not ProposedCell.objects.filter(scan=other).exists()


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_detection_whose_worker_is_killed_is_run_again_by_the_next_worker(
    scan, coordinator, settings
):
    media = Path(settings.MEDIA_ROOT)
    settings.JOB_LEASE_SECONDS = 2.0
    env = {**SLOW_TILES, "JOB_LEASE_SECONDS": "2"}
    purge_queues(["tiles"])
    first, _ = start_worker(["tiles"], media, env, name="first")
    try:
        job, _ = screening.start_detection(scan, coordinator)
        annotator_tasks.detect_cells.delay(job.pk)
        wait_running(job)
    finally:
        first.kill()  # SIGKILL: no chance to end the job
        first.wait()
    job.refresh_from_db()
    assert job.status == "running" and not ProposedCell.objects.exists()

    second, log = start_worker(["tiles"], media, env, name="second")
    try:
        ended = wait_ended(job)
    finally:
        stop_worker(second)
    assert ended.status == "done", ended.error
    assert ended.attempts == 2 and ended.lease_expires_at is None
    assert ProposedCell.objects.filter(scan=scan).count() == ended.found_count > 2
    assert "queued again" in log.read_text(errors="replace")


@pytest.mark.django_db(transaction=True)
def test_the_find_cells_button_starts_detection_and_follows_the_job(
    chromium_browser, live_server, study, scan, coordinator
):
    """In headless Chromium: the button posts, the status line follows the job to its end."""
    Membership.objects.create(study=study, user=coordinator, role=Membership.Role.ANNOTATOR)
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, coordinator.username)
    try:
        page.goto(f"{live_server.url}/studies/{study.name}/scans/{scan.pk}/")
        page.click("#find-cells")
        page.wait_for_selector("#detection-status[data-status='queued']", timeout=15000)
        job = DetectionJob.objects.get(scan=scan)
        assert page.is_disabled("#find-cells") and job.created_by == coordinator
        DetectionJob.objects.filter(pk=job.pk).update(
            status="running", progress={"tiles_done": 3, "tiles": 12}
        )
        page.wait_for_function(
            "document.querySelector('#detection-status').textContent.includes('3 of 12 tiles')",
            timeout=15000,
        )
        DetectionJob.objects.filter(pk=job.pk).update(status="done", found_count=19, new_count=19)
        page.wait_for_selector("#detection-status[data-status='done']", timeout=15000)
        assert "19 cells found" in page.inner_text("#detection-status")
        assert page.is_enabled("#find-cells")
    finally:
        purge_queues(["tiles"])  # the task the click queued: no worker runs it here
    assert problems == []
