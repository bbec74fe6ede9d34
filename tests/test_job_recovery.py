"""Jobs whose worker dies: a real Celery worker is killed with SIGKILL in the middle of an
export, a training run and a patch batch; a new worker recovers each by itself (re-run from the
start, or failed saying that the worker stopped), leaves no partial file, and cancel ends an
orphan at once. Leases are two seconds long here."""

from __future__ import annotations

import io
import os
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from annotator import tasks as annotator_tasks
from annotator.annotation import gold_round_for, set_label
from annotator.models import Cell, PatchBatch
from config.celery import app
from core import leases
from datasets import classmaps, exports, splits, versions
from datasets import tasks as dataset_tasks
from datasets.models import Export
from mltasks import runs
from mltasks.models import TrainingRun

from .conftest import client_for
from .workers import purge_queues, start_worker, stop_worker

LEASE = {"JOB_LEASE_SECONDS": "2"}
SMOKE = {
    "image_size": 32,
    "batch_size": 16,
    "max_epochs": 2,
    "oversample_to": 8,
    "saliency_samples": 1,
    "threads": 1,
    "export_models": False,  # the exports have their own tests (tests/test_export.py)
}


def wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"Not within {seconds} s: {what}"
        time.sleep(0.05)
    return found


def queued_messages(queue: str) -> int:
    with app.connection_for_write() as connection:
        return connection.default_channel.queue_declare(queue, passive=True).message_count


def partial_files(media: Path) -> list[Path]:
    return [p for p in media.rglob("*.part") if p.is_file()]


@pytest.fixture
def media(settings) -> Path:
    return Path(settings.MEDIA_ROOT)


@pytest.fixture
def short_leases(settings):
    settings.JOB_LEASE_SECONDS = 2.0
    settings.JOB_MAX_ATTEMPTS = 2


def _split(study, data_scientist):
    class_map, _ = classmaps.save_class_map(
        study, "merged", classmaps.propose(study), data_scientist
    )
    version, _ = versions.make_dataset(study, "aml", data_scientist, class_map=class_map)
    made, _ = splits.make_split(version, "patient-kfold", data_scientist, k=2, seed=0)
    return made


@pytest.fixture
def slow_split(study, curated, data_scientist):
    """The curated cells with noisy 320 px JPEG patches, which an imagefolder export re-encodes
    as PNG one by one: an export of a few seconds, long enough to be killed in the middle."""
    rng = np.random.default_rng(0)
    for cell in Cell.objects.filter(study=study):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(
            buffer, "JPEG", quality=95
        )
        with default_storage.open(cell.patch.name, "wb") as handle:
            handle.write(buffer.getvalue())
    return _split(study, data_scientist)


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_an_export_whose_worker_is_killed_is_written_again_by_the_next_worker(
    slow_split, data_scientist, media, short_leases
):
    purge_queues(["exports"])
    first, _ = start_worker(["exports"], media, LEASE, name="first")
    try:
        export = exports.request_export(slow_split, "imagefolder", data_scientist)
        dataset_tasks.write_export.delay(export.pk)
        wait_until(
            lambda: (
                Export.objects.filter(pk=export.pk, status="running", done__gt=0).exists()
                and partial_files(media)
            ),
            60,
            "the export running with a partial zip",
        )
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.wait()
    assert Export.objects.get(pk=export.pk).status == "running" and partial_files(media)

    second, log = start_worker(["exports"], media, LEASE, name="second")
    try:
        done = wait_until(
            lambda: Export.objects.filter(pk=export.pk, status__in=["done", "failed"]).first(),
            60,
            "the orphaned export recovered",
        )
    finally:
        stop_worker(second)
    assert done.status == "done", done.error
    assert done.attempts == 2 and done.done == done.total == len(slow_split.dataset.manifest)
    assert partial_files(media) == []
    folder = media / Path(done.file).parent
    assert [p.name for p in folder.iterdir()] == [Path(done.file).name]  # nothing else left
    with default_storage.open(done.file, "rb") as handle:
        archive = zipfile.ZipFile(io.BytesIO(handle.read()))
    assert archive.testzip() is None and "manifest.csv" in archive.namelist()
    assert "queued again" in log.read_text(errors="replace")


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_training_run_whose_worker_is_killed_fails_saying_so_and_leaves_no_weights(
    study, curated, data_scientist, media, short_leases
):
    split = _split(study, data_scientist)
    purge_queues(["training"])
    first, _ = start_worker(["training"], media, LEASE, name="first")
    try:
        response = client_for(data_scientist).post(
            "/api/v1/training-runs/", {"split": split.pk, "config": SMOKE}, format="json"
        )
        assert response.status_code == 202, response.json()
        run_id = response.json()["id"]
        fold_weights = media / f"training/run-{run_id}/fold-0.pt"
        wait_until(fold_weights.exists, 120, "the first fold's weights stored")
    finally:
        first.kill()
        first.wait()
    assert TrainingRun.objects.get(pk=run_id).status == "running"

    # One attempt only: the next worker fails the run instead of training it again.
    second, _ = start_worker(["training"], media, {**LEASE, "JOB_MAX_ATTEMPTS": "1"}, "second")
    try:
        run = wait_until(
            lambda: TrainingRun.objects.filter(pk=run_id).exclude(status="running").first(),
            30,
            "the orphaned run recovered",
        )
    finally:
        stop_worker(second)
    assert run.status == "failed" and "worker running this training run stopped" in run.error
    assert not run.models.exists() and run.finished_at
    assert not (media / f"training/run-{run_id}").exists() or not any(
        (media / f"training/run-{run_id}").rglob("*")
    )
    answer = client_for(data_scientist).post(f"/api/v1/training-runs/{run_id}/cancel/")
    assert answer.status_code == 400 and "has ended (failed)" in str(answer.json())


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_patch_batch_whose_worker_is_killed_is_cut_by_the_next_worker(
    study, scan, annotator, media, settings, short_leases
):
    gold = gold_round_for(study, annotator)
    cells = []
    for index in range(300):
        cell = Cell.objects.create(
            study=study,
            scan=scan,
            x=200 + index % 20 * 130,
            y=200 + index // 20 * 130,
            created_by=annotator,
        )
        set_label(cell, gold, annotator, node="NGS")
        cells.append(cell)
    settings.PATCH_BATCH_DELAY = 0.0
    purge_queues(["tiles"])
    first, _ = start_worker(["tiles"], media, LEASE, name="first")
    try:
        annotator_tasks.cache.delete(annotator_tasks.batch_key(scan.pk))
        annotator_tasks.schedule_patches(scan.pk)
        wait_until(
            lambda: Cell.objects.filter(scan=scan).exclude(cut_patch="").count() >= 5,
            60,
            "some patches cut",
        )
    finally:
        first.kill()
        first.wait()
    assert Cell.objects.filter(scan=scan, cut_patch="").exists(), "the batch ended before"
    batch = PatchBatch.objects.get(scan=scan)
    assert batch.status == "running"
    # What a writer killed between writing and renaming leaves: an old partial file.
    folder = next((media / "patches").iterdir())
    stale = folder / "tmpdeadwriter.part"
    stale.write_bytes(b"half a png")
    os.utime(stale, (time.time() - 60, time.time() - 60))

    second, _ = start_worker(["tiles"], media, LEASE, name="second")
    try:
        wait_until(
            lambda: not Cell.objects.filter(scan=scan, cut_patch="").exists(),
            60,
            "every patch cut after the worker died",
        )
        wait_until(lambda: not PatchBatch.objects.exists(), 10, "the batch done and removed")
    finally:
        stop_worker(second)
    assert partial_files(media) == []
    for cell in Cell.objects.filter(scan=scan):
        assert default_storage.exists(cell.cut_patch)


def in_a_minute():
    return timezone.now() + timedelta(seconds=60)


def _orphan(model, job, attempts: int = 1) -> None:
    """Make the job look as it does after its worker was killed: running, lease expired."""
    model.objects.filter(pk=job.pk).update(
        status="running",
        lease_owner="dead-host:4242:0badc0de",
        lease_expires_at=timezone.now() - timedelta(seconds=5),
        attempts=attempts,
    )


@pytest.mark.django_db
def test_a_redelivered_export_task_rewrites_an_orphan_and_removes_its_partial_zip(
    study, curated, data_scientist, media, short_leases
):
    split = _split(study, data_scientist)
    export = exports.request_export(split, "imagefolder", data_scientist)
    _orphan(Export, export)
    folder = media / f"exports/{split.sha256[:16]}"
    folder.mkdir(parents=True)
    (folder / f".imagefolder-{export.pk}.zip.dead.part").write_bytes(b"PK\x03\x04 half")
    (folder / f"imagefolder-{export.pk}.zip").write_bytes(b"renamed, never published")

    done = exports.run_export(export.pk)  # the task delivered again, e.g. by Redis
    assert done.status == "done" and done.attempts == 2
    assert sorted(p.name for p in folder.iterdir()) == [Path(done.file).name]

    # Out of attempts, a redelivered task fails the orphan and says why.
    again = exports.request_export(split, "csv", data_scientist)
    _orphan(Export, again, attempts=2)
    failed = exports.run_export(again.pk)
    assert failed.status == "failed" and "worker running this export stopped" in failed.error
    assert "dead-host:4242" in failed.error and failed.file == ""


@pytest.mark.django_db
def test_a_live_lease_keeps_a_second_delivery_away(study, curated, data_scientist, short_leases):
    split = _split(study, data_scientist)
    export = exports.request_export(split, "json", data_scientist)
    Export.objects.filter(pk=export.pk).update(
        status="running",
        lease_owner="live:1:1",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )
    assert exports.run_export(export.pk).status == "running"
    assert leases.recover_orphans() == []


@pytest.mark.django_db
def test_the_sweep_queues_orphans_again_or_fails_them(study, curated, data_scientist, short_leases):
    split = _split(study, data_scientist)
    purge_queues(["exports"])
    retried = exports.request_export(split, "json", data_scientist)
    _orphan(Export, retried, attempts=1)
    given_up = exports.request_export(split, "csv", data_scientist)
    _orphan(Export, given_up, attempts=2)
    recovered = sorted(leases.recover_orphans())
    assert recovered == [("export", retried.pk, "queued"), ("export", given_up.pk, "failed")]
    assert queued_messages("exports") == 1  # the retried one's task, sent to Redis again
    purge_queues(["exports"])
    assert Export.objects.get(pk=given_up.pk).error.startswith("The worker running this export")
    assert exports.run_export(retried.pk).status == "done"


@pytest.mark.django_db
def test_cancel_ends_a_queued_running_or_orphaned_run_at_once(
    study, curated, data_scientist, media, short_leases
):
    split = _split(study, data_scientist)
    client = client_for(data_scientist)
    orphan = runs.start_run(split, data_scientist, SMOKE)
    _orphan(TrainingRun, orphan)
    weights = media / f"training/run-{orphan.pk}/fold-0.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"half the weights")
    live = runs.start_run(split, data_scientist, SMOKE)
    TrainingRun.objects.filter(pk=live.pk).update(
        status="running",
        lease_owner="live:1:1",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )
    queued = runs.start_run(split, data_scientist, SMOKE)
    for run in (orphan, live, queued):
        answer = client.post(f"/api/v1/training-runs/{run.pk}/cancel/")
        assert answer.status_code == 200, answer.json()
        run.refresh_from_db()
        assert run.status == "cancelled" and run.finished_at and run.lease_expires_at is None
    assert not weights.exists()
    # A worker holding the live run loses it at its next check and writes nothing more.
    lease = leases.Lease(TrainingRun, live.pk, "live:1:1")
    assert not lease.held() and not lease.finish(status="done")
    assert runs.execute(orphan.pk).status == "cancelled"  # a late delivery leaves it alone
    answer = client.post(f"/api/v1/training-runs/{queued.pk}/cancel/")
    assert answer.status_code == 400 and "has ended (cancelled)" in str(answer.json())
    assert leases.recover_orphans() == []


@pytest.mark.django_db
def test_cancel_ends_an_orphaned_export_and_removes_its_partial_zip(
    study, curated, data_scientist, media, short_leases
):
    split = _split(study, data_scientist)
    export = exports.request_export(split, "imagefolder", data_scientist)
    _orphan(Export, export)
    folder = media / f"exports/{split.sha256[:16]}"
    folder.mkdir(parents=True)
    (folder / f".imagefolder-{export.pk}.zip.dead.part").write_bytes(b"PK\x03\x04 half")
    client = client_for(data_scientist)
    answer = client.post(f"/api/v1/exports/{export.pk}/cancel/")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    assert list(folder.iterdir()) == []
    assert exports.run_export(export.pk).status == "cancelled"  # a late delivery: nothing
    again = client.post(f"/api/v1/exports/{export.pk}/cancel/")
    assert again.status_code == 400 and "has ended (cancelled)" in again.json()["detail"]
