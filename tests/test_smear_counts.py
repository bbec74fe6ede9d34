"""Counting a smear with a finished run's models (mltasks.smear_counts and
smear_classification): which cells are classified, the differential counts per scan and per
patient beside the examiners', uncountable cells, the gallery, the API, the command, and a
real worker that is cancelled and one that is killed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from PIL import Image
from statsmodels.stats.proportion import proportion_confint

from annotator import annotation, patches, rounds, screening
from annotator.models import Membership
from mltasks import inference, run_config, smear_counts, training
from mltasks import tasks as mltasks_tasks
from mltasks.models import ClassifiedCell, FoldModel, ScanClassification, TrainingRun
from mltasks.resnext import resnext50_32x4d
from mltasks.smear_classification import run_classification

from .conftest import client_for, log_in, new_page
from .test_job_recovery import wait_until
from .test_proposal_review import add_proposals
from .workers import celery_worker, purge_queues, start_worker, stop_worker

SPOTS = [(900, 900), (1400, 1100), (2000, 1900), (2600, 500), (700, 2400)]


_WEIGHTS: dict[tuple, bytes] = {}  # (classes, favoured) -> a fold model's bytes, made once


def finished_run(split, user, favoured: str | None = None) -> TrainingRun:
    """A done run with one fold model of seeded random weights at 32 px; `favoured` makes the
    model give that class to every image (its output bias far above the others)."""
    config = run_config.load_config({"image_size": 32, "folds": ["0"], "threads": 2})
    run = TrainingRun.objects.create(
        split=split, config=config, status=TrainingRun.Status.DONE, created_by=user
    )
    classes = split.dataset.classes
    key = (tuple(classes), favoured)
    if key not in _WEIGHTS:
        torch.manual_seed(3)
        model = resnext50_32x4d(num_classes=len(classes))
        state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        if favoured is not None:
            state["fc.bias"][classes.index(favoured)] = 1000.0
        _WEIGHTS[key] = training.state_dict_bytes(state, classes, config)
    name = f"training/run-{run.pk}/fold-0.pt"
    default_storage.save(name, io.BytesIO(_WEIGHTS[key]))
    FoldModel.objects.create(run=run, fold="0", weights=name, sha256="0" * 64, classes=classes)
    return run


@pytest.fixture
def found(study, scan, coordinator, annotator):
    """Five proposals on the scan: one accepted with a label, one rejected, three open; and
    two cells placed by hand, one labelled NGS and one "cannot classify"."""
    proposals = add_proposals(scan, coordinator, SPOTS)
    gold = annotation.gold_round_for(study, annotator)
    accepted = screening.accept_proposal(proposals[0], annotator, node="MYB", study=study)
    screening.reject_proposal(proposals[1], annotator)
    by_hand = annotation.create_cell(study, scan, 2800, 2200, annotator)
    annotation.set_label(by_hand, gold, annotator, node="NGS")
    smudged = annotation.create_cell(study, scan, 300, 300, annotator)
    annotation.set_label(smudged, gold, annotator, cannot_classify=True)
    return {
        "proposals": proposals,
        "accepted": accepted.cell,
        "by_hand": by_hand,
        "smudged": smudged,
    }


def classify(run, scan, user) -> ScanClassification:
    job, created = smear_counts.start_classification(run, scan, user)
    assert created
    return run_classification(job.pk, "cpu")


@pytest.mark.django_db
def test_every_leukocyte_found_is_classified_once_as_the_models_see_its_patch(
    study, scan, split, data_scientist, found
):
    run = finished_run(split, data_scientist)
    job = classify(run, scan, data_scientist)
    assert job.status == "done", job.error
    assert job.device == "cpu" and job.cell_count == 6 and job.seconds > 0
    cells = {(c.x, c.y): c for c in ClassifiedCell.objects.filter(job=job)}
    expected = {SPOTS[0], *SPOTS[2:], (2800, 2200), (300, 300)}
    assert set(cells) == expected  # the rejected proposal is no leukocyte; none counted twice
    accepted = cells[SPOTS[0]]
    assert accepted.proposal_id == found["proposals"][0].pk
    assert accepted.cell_id == found["accepted"].pk
    assert cells[(2800, 2200)].proposal_id is None

    # The stored probabilities are the ensemble's on the study's patch of each spot.
    spots = sorted(cells)
    images = [patches.patch_image(scan, patches.geometry_at(study, scan, x, y)) for x, y in spots]
    expected_p = inference.ensemble_predict(run, images)
    stored = np.array([cells[spot].probabilities for spot in spots])
    assert np.allclose(stored, expected_p, atol=1e-5)
    classes = split.dataset.classes
    assert [cells[s].predicted for s in spots] == [classes[i] for i in expected_p.argmax(axis=1)]


@pytest.mark.django_db
def test_the_counts_leave_uncountable_cells_out_and_stand_beside_the_examiners(
    study, scan, split, data_scientist, found
):
    run = finished_run(split, data_scientist, favoured="MYO")
    job = classify(run, scan, data_scientist)
    report = smear_counts.scan_report(run, scan)
    model, examiners = report["model"], report["examiners"]
    assert report["classification"] == job.pk
    assert model["counted"] == 5 and model["uncountable"] == 1  # the smudged cell is out
    myo = next(row for row in model["classes"] if row["code"] == "MYO")
    assert myo["count"] == 5 and myo["share"] == 1.0
    groups = {row["group"]: row for row in model["groups"]}
    assert groups["blast"]["share"] == 1.0 and groups["atypical"]["count"] == 5
    low, high = proportion_confint(5, 5, alpha=0.05, method="wilson")
    assert groups["blast"]["ci"] == pytest.approx([low, high])

    # The examiners labelled two of the scan's cells (MYB, NGS) and could not classify one.
    assert examiners["counted"] == 2 and examiners["uncountable"] == 1
    shares = {row["code"]: row["share"] for row in examiners["classes"]}
    assert shares["NGS"] == 0.5 and shares["MYO"] == 0.0
    assert "MYB" not in shares and shares["other"] == 0.5  # no class of the run holds MYB
    by_group = {row["group"]: row["count"] for row in examiners["groups"]}
    assert by_group == {"blast": 0, "atypical": 1}

    patient = report_patient = smear_counts.patient_report(run, scan.patient)
    assert report_patient["model"]["counted"] == 5 and patient["scans"] == 1
    assert smear_counts.model_group_counts(run, "blast")[scan.patient_id].in_group == 5


@pytest.mark.django_db
def test_a_count_needs_a_finished_run_cells_found_and_an_overseer(
    study, scan, split, data_scientist, annotator, coordinator
):
    run = finished_run(split, data_scientist)
    with pytest.raises(Exception, match="no cells to count yet"):
        smear_counts.start_classification(run, scan, data_scientist)
    add_proposals(scan, coordinator, SPOTS[:1])
    with pytest.raises(Exception, match="count a scan with a model"):
        smear_counts.start_classification(run, scan, annotator)
    run.status = TrainingRun.Status.FAILED
    run.save()
    with pytest.raises(Exception, match="only a finished run can count"):
        smear_counts.start_classification(run, scan, data_scientist)


@pytest.mark.django_db
def test_the_api_counts_ranks_the_gallery_and_hides_it_all_from_raters(
    study, scan, split, data_scientist, annotator, coordinator, rater, outsider, found
):
    run = finished_run(split, data_scientist)
    job = classify(run, scan, data_scientist)
    api = client_for(data_scientist)

    counts = api.get(f"/api/v1/training-runs/{run.pk}/counts/?scan={scan.pk}")
    assert counts.status_code == 200 and counts.json()["model"]["counted"] == 5
    by_patient = api.get(f"/api/v1/training-runs/{run.pk}/counts/?patient={scan.patient.code}")
    assert by_patient.status_code == 200 and by_patient.json()["patient"] == scan.patient.code

    gallery = api.get(f"/api/v1/scan-classifications/{job.pk}/gallery/?group=blast&limit=3")
    assert gallery.status_code == 200
    body = gallery.json()
    assert body["total"] == 5 and len(body["cells"]) == 3
    ranked = [cell["probability"] for cell in body["cells"]]
    assert ranked == sorted(ranked, reverse=True)
    classes = split.dataset.classes
    top = ClassifiedCell.objects.get(pk=body["cells"][0]["id"])
    blast = sum(
        top.probabilities[classes.index(code)] for code in ("MYO", "MOB") if code in classes
    )
    assert body["cells"][0]["probability"] == pytest.approx(blast, abs=1e-5)
    assert body["cells"][0]["viewer"].endswith(f"/scans/{scan.pk}/?at={top.x},{top.y}")
    patch = api.get(body["cells"][0]["patch"])
    assert patch.status_code == 200 and patch["Content-Type"] == "image/jpeg"
    side = patches.patch_side_px(study, scan)
    assert Image.open(io.BytesIO(patch.content)).size == (side, side)

    for url, problem in [
        (f"/api/v1/scan-classifications/{job.pk}/gallery/?group=nonsense", "no group 'nonsense'"),
        (f"/api/v1/scan-classifications/{job.pk}/gallery/?limit=many", "limit must be"),
        (f"/api/v1/training-runs/{run.pk}/counts/?scan={scan.pk}&patient=x", "Name one scan"),
        (f"/api/v1/training-runs/{run.pk}/counts/", "Name one scan"),
    ]:
        answer = api.get(url)
        assert answer.status_code == 400 and problem in json.dumps(answer.json()), url
    assert api.get(f"/api/v1/training-runs/{run.pk}/counts/?scan=999999").status_code == 404

    # The examiner reviews the gallery in the gold viewer; counting and counts are overseers'.
    examiner = client_for(annotator)
    assert examiner.get(f"/api/v1/scan-classifications/{job.pk}/gallery/").status_code == 200
    assert examiner.get(body["cells"][0]["patch"]).status_code == 200
    run_urls = [f"/api/v1/training-runs/{run.pk}/counts/?scan={scan.pk}"]
    assert examiner.get(run_urls[0]).status_code == 404
    assert examiner.post(f"/api/v1/training-runs/{run.pk}/classify/", {}).status_code == 404

    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    for user in (rater, outsider):
        other = client_for(user)
        for url in (
            *run_urls,
            f"/api/v1/scan-classifications/{job.pk}/",
            f"/api/v1/scan-classifications/{job.pk}/gallery/",
            body["cells"][0]["patch"],
        ):
            assert other.get(url).status_code == 404, (user.username, url)
        assert other.get("/api/v1/scan-classifications/").json()["count"] == 0
        pages = Client()
        pages.force_login(user)
        assert pages.get(f"/training/{run.pk}/scans/{scan.pk}/gallery/").status_code == 404
        assert pages.get(f"/training/{run.pk}/counts/").status_code in (403, 404)
        screen = pages.get(f"/studies/{study.name}/scans/{scan.pk}/")
        assert screen.status_code == 404 and b"gallery" not in screen.content
        refused = other.post(f"/api/v1/training-runs/{run.pk}/classify/", {}, format="json")
        assert refused.status_code == 404


@pytest.mark.django_db
def test_the_command_counts_scans_here_and_prints_the_shares(
    study, scan, split, data_scientist, found
):
    run = finished_run(split, data_scientist, favoured="NGS")
    out = io.StringIO()
    call_command("count_smear", "--run", str(run.pk), "--scan", str(scan.pk), stdout=out)
    text = out.getvalue()
    assert f"Scan {scan.pk}: 5 cell(s) counted, 1 uncountable" in text
    assert "NGS: 5 = 100.0%" in text and "blast: 0.0%" in text
    out = io.StringIO()
    call_command("count_smear", "--run", str(run.pk), "--all", "--format", "json", stdout=out)
    (report,) = json.loads(out.getvalue())
    assert report["scan"] == scan.pk and report["model"]["counted"] == 5
    assert ScanClassification.objects.filter(run=run).count() == 1  # counted once, then read
    with pytest.raises(CommandError, match="Name the scans"):
        call_command("count_smear", "--run", str(run.pk))
    again = ["count_smear", "--run", str(run.pk), "--scan", str(scan.pk), "--rerun"]
    if torch.cuda.is_available():
        call_command(*again, "--device", "cuda", stdout=io.StringIO())
    else:  # the job ends failed with the reason; nothing is left queued
        with pytest.raises(CommandError, match="has no CUDA"):
            call_command(*again, "--device", "cuda", stdout=io.StringIO())
        assert ScanClassification.objects.filter(run=run).latest("pk").status == "failed"
    with pytest.raises(CommandError, match="Not scans of study"):
        call_command("count_smear", "--run", str(run.pk), "--scan", "999999")


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_the_api_queues_counts_on_a_worker_and_cancel_writes_nothing(
    study, scan, split, data_scientist, found, settings
):
    run = finished_run(split, data_scientist)
    api = client_for(data_scientist)
    with celery_worker(["training"], Path(settings.MEDIA_ROOT)):
        answer = api.post(f"/api/v1/training-runs/{run.pk}/classify/", {}, format="json")
        assert answer.status_code == 202, answer.content
        (queued,) = answer.json()["classifications"]
        done = wait_until(
            lambda: ScanClassification.objects.filter(pk=queued["id"], status="done").first(),
            90,
            "the classification done",
        )
    assert done.cell_count == 6 and ClassifiedCell.objects.filter(job=done).count() == 6
    again = api.post(f"/api/v1/training-runs/{run.pk}/classify/", {}, format="json").json()
    assert [job["id"] for job in again["classifications"]] == [done.pk]  # nothing new

    fresh, _ = smear_counts.start_classification(run, scan, data_scientist, rerun=True)
    cancelled = api.post(f"/api/v1/scan-classifications/{fresh.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert run_classification(fresh.pk, "cpu").status == "cancelled"
    assert not ClassifiedCell.objects.filter(job=fresh).exists()
    ended = api.post(f"/api/v1/scan-classifications/{fresh.pk}/cancel/")
    assert ended.status_code == 400 and "nothing to cancel" in ended.json()["detail"]


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_count_whose_worker_is_killed_is_run_again_by_the_next_worker(
    study, scan, coordinator, split, data_scientist, settings
):
    many = [(300 + 80 * (n % 30), 300 + 80 * (n // 30)) for n in range(300)]
    add_proposals(scan, coordinator, many)
    run = finished_run(split, data_scientist)
    media = Path(settings.MEDIA_ROOT)
    settings.JOB_LEASE_SECONDS = 2.0
    env = {"JOB_LEASE_SECONDS": "2"}
    purge_queues(["training"])
    first, _ = start_worker(["training"], media, env, name="first")
    try:
        job, _ = smear_counts.start_classification(run, scan, data_scientist)
        mltasks_tasks.classify_scan.delay(job.pk)
        wait_until(
            lambda: ScanClassification.objects.filter(
                pk=job.pk, status="running", progress__cells_done__gt=0
            ).exists(),
            60,
            "the classification under way",
        )
    finally:
        first.kill()  # SIGKILL: no chance to end the job
        first.wait()
    job.refresh_from_db()
    assert job.status == "running" and not ClassifiedCell.objects.exists()

    second, _ = start_worker(["training"], media, env, name="second")
    try:
        ended = wait_until(
            lambda: ScanClassification.objects.filter(
                pk=job.pk, status__in=["done", "failed"]
            ).first(),
            120,
            "the classification ended",
        )
    finally:
        stop_worker(second)
    assert ended.status == "done", ended.error
    assert ended.attempts == 2 and ended.cell_count == 300
    assert ClassifiedCell.objects.filter(job=ended).count() == 300


@pytest.mark.django_db
def test_the_counts_page_counts_on_request_and_shows_model_beside_examiners(
    study, scan, split, data_scientist, annotator, found
):
    run = finished_run(split, data_scientist, favoured="MYO")
    page = Client()
    page.force_login(data_scientist)
    url = f"/training/{run.pk}/counts/"
    before = page.get(url).content.decode()
    assert scan.original_name in before and "not counted" in before
    assert page.post(url, {"action": "count", "scan": scan.pk}).status_code == 302
    job = ScanClassification.objects.get(run=run, scan=scan)
    assert job.status == "queued"
    run_classification(job.pk, "cpu")

    shown = page.get(url).content.decode()
    row = shown[shown.index(f'data-scan="{scan.pk}"') :]
    row = row[: row.index("</tr>")]
    assert "100.0% (" in row  # every counted cell a blast by the model
    assert "0.0% (" in row  # none by the examiners, who counted MYB and NGS
    assert f'data-patient="{scan.patient.code}"' in shown
    assert f"/training/{run.pk}/scans/{scan.pk}/gallery/" in shown

    assert Client().get(url).status_code == 302  # to the login page
    examiner = Client()
    examiner.force_login(annotator)
    assert examiner.get(url).status_code == 404  # the counts are the overseers'

    screen = examiner.get(f"/studies/{study.name}/scans/{scan.pk}/").content.decode()
    assert f"/training/{run.pk}/scans/{scan.pk}/gallery/" in screen  # the examiner's way there
    gallery = examiner.get(f"/training/{run.pk}/scans/{scan.pk}/gallery/?group=atypical")
    text = gallery.content.decode()
    # The examiner's gallery keeps the cell another examiner could not classify: which one
    # it is would be that examiner's answer.
    assert gallery.status_code == 200 and text.count("<img src=") == 6
    assert f"?at={SPOTS[2][0]},{SPOTS[2][1]}" in text
    assert "Examiners" not in text  # the examiners' count is the overseers'
    assert "Examiners" in page.get(f"/training/{run.pk}/scans/{scan.pk}/gallery/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_gallery_cell_opens_the_gold_viewer_at_it(
    chromium_browser, live_server, study, scan, split, data_scientist, annotator, found
):
    run = finished_run(split, data_scientist)
    classify(run, scan, data_scientist)
    page, problems = new_page(chromium_browser)
    log_in(page, live_server.url, "anna")
    page.goto(f"{live_server.url}/training/{run.pk}/scans/{scan.pk}/gallery/")
    first = page.locator("ol.gallery li").first
    wanted = ClassifiedCell.objects.get(pk=first.get_attribute("data-cell"))
    first.locator("a").click()
    page.wait_for_function("document.body.dataset.ready === 'true'", timeout=30000)
    centre = page.evaluate(
        """() => {
            const viewport = window.cytomark.viewer.viewport;
            const point = viewport.viewportToImageCoordinates(viewport.getCenter(true));
            return {x: point.x, y: point.y};
        }"""
    )
    assert abs(centre["x"] - wanted.x) < 5 and abs(centre["y"] - wanted.y) < 5
    page.wait_for_selector("#picker:not([hidden])")
    assert problems == []


def test_a_count_or_detection_stopped_by_a_shutdown_says_how_far_it_got():
    from annotator.models import DetectionJob
    from mltasks.smear_classification import stopped_message as count_stopped

    counting = ScanClassification(progress={"cells_done": 64, "cells": 300})
    assert count_stopped(counting, "Cytomark was shut down") == (
        "Stopped because Cytomark was shut down after 64 of 300 cells; "
        "start it again to count the scan."
    )
    finding = DetectionJob(progress={})
    assert screening.stopped_message(finding, "its worker stopped") == (
        "Stopped because its worker stopped; start it again to find the scan's cells."
    )


@pytest.mark.django_db
def test_a_proposal_on_a_cell_placed_by_hand_is_that_cell_counted_once(
    study, scan, coordinator, annotator
):
    step = 5.0 / scan.mpp_x  # the same-cell radius in pixels
    clicked = annotation.create_cell(study, scan, 1500, 1500, annotator)
    add_proposals(
        scan, coordinator, [(1500 + int(step * 0.8), 1500), (1500 + int(step * 1.2), 1800)]
    )
    spots = smear_counts.leukocytes(scan, study)
    assert [(s.x, s.y, s.cell_id) for s in spots if s.cell_id] == [(1500, 1500, clicked.pk)]
    assert len(spots) == 2  # the far proposal is a leukocyte of its own


@pytest.mark.django_db
def test_a_count_that_cannot_be_stored_ends_failed_and_stores_nothing(
    study, scan, split, data_scientist, found, monkeypatch
):
    from django.db import DatabaseError

    run = finished_run(split, data_scientist)
    job, _ = smear_counts.start_classification(run, scan, data_scientist)

    def full_disk(*args, **kwargs):
        raise DatabaseError("could not extend file: No space left on device")

    monkeypatch.setattr(ClassifiedCell.objects, "bulk_create", full_disk)
    ended = run_classification(job.pk, "cpu")
    assert ended.status == "failed" and ended.error.startswith("The classification failed")
    assert ended.lease_expires_at is None and not ClassifiedCell.objects.exists()


@pytest.mark.django_db
def test_every_examiners_gold_answer_counts_and_a_deleted_or_doubled_cell_once(
    study, scan, coordinator, annotator, second_annotator
):
    proposals = add_proposals(scan, coordinator, SPOTS[:2])
    accepted = screening.accept_proposal(proposals[0], annotator, node="LYT", study=study).cell
    annotation.delete_cell(accepted, annotator, None)  # the examiner took it back
    doubled = [annotation.create_cell(study, scan, 2500, 2000, annotator) for _ in range(2)]
    others = annotation.gold_round_for(study, second_annotator)
    annotation.set_label(doubled[0], others, second_annotator, cannot_classify=True)

    spots = smear_counts.leukocytes(scan, study)
    assert sorted((s.x, s.y) for s in spots) == sorted([SPOTS[1], (2500, 2000)])
    # The second examiner's gold round counts too: their "cannot classify" is uncountable.
    assert smear_counts.uncountable_cells(study) == {doubled[0].pk}


@pytest.mark.django_db
def test_an_overseer_who_rates_the_scan_blind_reaches_no_count_of_it(
    study, scan, split, data_scientist, coordinator, rater, found
):
    run = finished_run(split, data_scientist)
    job = classify(run, scan, data_scientist)
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    Membership.objects.create(study=study, user=rater, role=Membership.Role.DATA_SCIENTIST)
    blind = client_for(rater)
    cell = ClassifiedCell.objects.filter(job=job).first()
    for url in (
        f"/api/v1/scan-classifications/{job.pk}/",
        f"/api/v1/scan-classifications/{job.pk}/gallery/",
        f"/api/v1/classified-cells/{cell.pk}/patch.jpeg",
    ):
        assert blind.get(url).status_code == 404, url
    assert blind.get("/api/v1/scan-classifications/").json()["count"] == 0
    pages = Client()
    pages.force_login(rater)
    assert pages.get(f"/training/{run.pk}/scans/{scan.pk}/gallery/").status_code == 404


@pytest.mark.django_db
def test_ids_and_numbers_that_are_no_numbers_are_refused_by_name(
    study, scan, split, data_scientist, found
):
    run = finished_run(split, data_scientist)
    job = classify(run, scan, data_scientist)
    api = client_for(data_scientist)
    for url, name in [
        ("/api/v1/scan-classifications/?run=\u00b2", "run"),
        ("/api/v1/scan-classifications/?scan=x", "scan"),
        (f"/api/v1/scan-classifications/{job.pk}/gallery/?limit=\u00b2", "limit"),
        (f"/api/v1/scan-classifications/{job.pk}/gallery/?offset=-1", "offset"),
        (f"/api/v1/training-runs/{run.pk}/counts/?scan=\u00b2", "scan"),
    ]:
        answer = api.get(url)
        assert answer.status_code == 400 and name in json.dumps(answer.json()), url
    pages = Client()
    pages.force_login(data_scientist)
    counts = f"/training/{run.pk}/counts/"
    assert pages.get(f"/training/{run.pk}/scans/{scan.pk}/gallery/?page=\u00b2").status_code == 200
    for form in ({"action": "cancel", "job": "abc"}, {"action": "count", "scan": "\u00b2"}):
        answer = pages.post(counts, form, follow=True)
        assert answer.status_code == 200 and "must be a" in answer.content.decode(), form
    assert ScanClassification.objects.filter(run=run).count() == 1  # nothing started
