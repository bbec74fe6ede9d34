"""Jobs whose worker shuts down: a real Celery worker stopped warmly (SIGTERM, as `make run`'s
Ctrl-C and `docker compose stop` do) in the middle of a training run or an export stops it at
its next step, within seconds, and the job ends cancelled with a sentence saying why; a worker
that had to be killed has its jobs closed the same way by `close_stopped_jobs`. A run that fails
says why in a sentence, never with a traceback."""

from __future__ import annotations

import re
import signal
import time

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command

from annotator.models import Cell
from datasets import exports
from datasets import tasks as dataset_tasks
from datasets.models import Export
from mltasks import runs
from mltasks.models import TrainingRun

from . import test_job_recovery as recovery
from .conftest import client_for
from .test_job_recovery import _split, partial_files, wait_until
from .workers import purge_queues, start_worker, stop_worker

# Tiny images and endless epochs: a run that starts at once and is far from done for minutes.
ENDLESS = {
    "image_size": 32,
    "batch_size": 16,
    "max_epochs": 10000,
    "patience": 10000,
    "oversample_to": 8,
    "saliency_samples": 0,
    "threads": 1,
}
media, slow_split = recovery.media, recovery.slow_split  # its fixtures, shared
STOPPED = r"Stopped because {} during fold 1 of 2, epoch \d+; start it again to train\."


def start_endless_run(split, data_scientist) -> int:
    response = client_for(data_scientist).post(
        "/api/v1/training-runs/", {"split": split.pk, "config": ENDLESS}, format="json"
    )
    assert response.status_code == 202, response.json()
    run_id = response.json()["id"]
    wait_until(
        lambda: TrainingRun.objects.filter(
            pk=run_id, status="running", progress__has_key="epoch"
        ).exists(),
        120,
        "the run in its first epoch",
    )
    return run_id


def no_weights(media_root, run_id: int) -> bool:
    folder = media_root / f"training/run-{run_id}"
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


@pytest.fixture
def training(study, curated, data_scientist, media):
    """A training worker (stopped at the end if still running) and a run it trains for ever."""
    split = _split(study, data_scientist)
    purge_queues(["training"])
    worker, _ = start_worker(["training"], media)
    try:
        yield worker, start_endless_run(split, data_scientist)
    finally:
        stop_worker(worker)


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_worker_stopped_warmly_cancels_its_training_run_at_the_next_step(training, media):
    worker, run_id = training
    stopped = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=15)
    assert time.monotonic() - stopped < 10
    run = TrainingRun.objects.get(pk=run_id)
    assert run.status == "cancelled" and run.finished_at
    assert re.fullmatch(STOPPED.format("its worker was shut down"), run.error), run.error
    assert no_weights(media, run_id) and not run.models.exists()


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_the_jobs_of_a_killed_worker_are_closed_with_the_sentence(training, media):
    worker, run_id = training
    worker.kill()  # SIGKILL, as `make run` does to a worker that does not stop in time
    worker.wait()
    assert TrainingRun.objects.get(pk=run_id).status == "running"

    call_command("close_stopped_jobs", str(worker.pid), reason="Cytomark was shut down (Ctrl-C)")
    run = TrainingRun.objects.get(pk=run_id)
    assert run.status == "cancelled" and run.lease_expires_at is None
    assert re.fullmatch(STOPPED.format(r"Cytomark was shut down \(Ctrl-C\)"), run.error), run.error
    assert no_weights(media, run_id)


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_worker_stopped_warmly_cancels_its_export_and_leaves_no_partial_file(
    slow_split, data_scientist, media
):
    purge_queues(["exports"])
    worker, _ = start_worker(["exports"], media)
    try:
        export = exports.request_export(slow_split, "imagefolder", data_scientist)
        dataset_tasks.write_export.delay(export.pk)
        wait_until(
            lambda: Export.objects.filter(pk=export.pk, status="running", done__gt=0).exists(),
            60,
            "the export running",
        )
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=15)
    finally:
        stop_worker(worker)
    export.refresh_from_db()
    assert export.status == "cancelled" and export.file == ""
    assert re.fullmatch(
        r"Stopped because its worker was shut down while it was being written "
        r"\(\d+ of \d+ files written\); request it again\.",
        export.error,
    ), export.error
    assert partial_files(media) == []


@pytest.mark.django_db
def test_a_failed_run_says_why_in_a_sentence_without_a_traceback(
    study, curated, data_scientist, client
):
    split = _split(study, data_scientist)
    default_storage.delete(Cell.objects.filter(study=study).order_by("pk").last().patch.name)
    run = runs.start_run(split, data_scientist, ENDLESS)
    run = runs.execute(run.pk)
    assert run.status == "failed"
    assert run.error.startswith("The training run failed while loading the patches because a file")
    assert "Traceback" not in run.error and "Error:" not in run.error
    client.force_login(data_scientist)
    page = client.get(f"/studies/{study.name}/training/").content.decode()
    assert "was not found in storage" in page and "Traceback" not in page
