"""Fanned-out training runs (config `fan_out`): each fold a task of its own on the `training`
queue. Through real Celery workers: the report equals the sequential run's, cancel stops the
folds, a fold whose worker is SIGKILLed is trained again; in this process: a failing fold fails
the run naming it, and a fold whose worker died out of attempts fails it saying so."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.files.storage import default_storage

from core import leases
from core.errors import DomainError
from mltasks import fanout, runs, tasks, training
from mltasks.models import FoldJob, FoldModel, TrainingRun

from . import test_training
from .conftest import client_for
from .test_job_recovery import LEASE, _orphan, in_a_minute, queued_messages, wait_until
from .workers import purge_queues, start_worker, stop_worker

three_patients = test_training.three_patients  # a split of three folds, by patient
SMOKE = {**test_training.SMOKE, "saliency_samples": 1, "threads": 1}
FANNED = {**SMOKE, "fan_out": True}
ENDED = ("done", "failed", "cancelled")


@pytest.fixture
def media(settings) -> Path:
    return Path(settings.MEDIA_ROOT)


def assert_close(seen, expected, where: str = "report") -> None:
    """Equal JSON data, numbers within 1e-6."""
    if isinstance(expected, dict):
        assert sorted(seen) == sorted(expected), where
        for key in expected:
            assert_close(seen[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(seen) == len(expected), where
        for index, (a, b) in enumerate(zip(seen, expected, strict=True)):
            assert_close(a, b, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(seen, bool):
        assert math.isclose(seen, expected, abs_tol=1e-6) or seen == expected, where
    else:
        assert seen == expected, where


def fold_probabilities(run: TrainingRun, data, plans) -> list[np.ndarray]:
    """Each fold model's probabilities on its test cells, read back from storage."""
    out = []
    for plan, model in zip(plans, run.models.order_by("fold"), strict=True):
        with default_storage.open(model.weights, "rb") as handle:
            network = training.load_model(handle.read(), data.classes)
        out.append(training.predict(network, data, plan.test, run.config, torch.device("cpu")))
    return out


def two_folds_training(run: TrainingRun) -> list[FoldJob] | None:
    """Two fold jobs running at once, the first of them in its training steps."""
    jobs = sorted(
        FoldJob.objects.filter(run=run, status="running"),
        key=lambda job: "step" not in job.progress,
    )
    return jobs if len(jobs) == 2 and "step" in jobs[0].progress else None


def worker_pid(job: FoldJob) -> int:
    """The process id of the worker holding a fold job (its lease owner: host:pid:random)."""
    return int(job.lease_owner.split(":")[1])


def run_files(media: Path, run: TrainingRun) -> list[str]:
    folder = media / f"training/run-{run.pk}"
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_fanned_out_run_gives_the_report_of_the_sequential_run_though_a_worker_is_killed(
    three_patients, data_scientist, media, settings
):
    """Two workers train two folds at once; one is SIGKILLed in the middle of its fold, which
    the other trains again once the lease ran out, and the report is still the one a single
    task gives (trained here, while the workers start)."""
    split = three_patients
    settings.JOB_LEASE_SECONDS = 2.0
    purge_queues(["training"])
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(start_worker, ["training"], media, LEASE, n) for n in "ab"]
        sequential = runs.execute(runs.start_run(split, data_scientist, SMOKE).pk)
        workers = {process.pid: process for process, _ in (s.result() for s in starting)}
    try:
        assert sequential.status == "done", sequential.error
        fanned = runs.start_run(split, data_scientist, FANNED)
        tasks.queue_run(fanned)
        training_now = wait_until(
            lambda: two_folds_training(fanned), 120, "two folds training at once"
        )
        assert {worker_pid(job) for job in training_now} == set(workers)
        killed = training_now[0]
        workers[worker_pid(killed)].kill()  # SIGKILL: no chance to clean up
        workers[worker_pid(killed)].wait()
        fanned = wait_until(
            lambda: TrainingRun.objects.filter(pk=fanned.pk, status__in=ENDED).first(),
            120,
            "the fanned-out run ended",
        )
    finally:
        for worker in workers.values():
            stop_worker(worker)
    assert fanned.status == "done", fanned.error
    attempts = dict(
        FoldJob.objects.filter(run=fanned, status="done").values_list("fold", "attempts")
    )
    assert attempts == {fold: 2 if fold == killed.fold else 1 for fold in "012"}

    expected, seen = sequential.report, fanned.report
    assert seen["config"] == {**expected["config"], "fan_out": True}
    assert [s["cell"] for s in seen["saliency"]] == [s["cell"] for s in expected["saliency"]]
    for key in ("config", "plots", "saliency"):  # their files are named after the run
        seen.pop(key), expected.pop(key)
    for fold in (*seen["folds"], *expected["folds"]):
        assert fold.pop("seconds") > 0
    assert_close(seen, expected)
    data = training.load_data(split, SMOKE["image_size"])
    plans = training.fold_plans(split, data, sequential.config)
    for fanned_out, one_task in zip(
        fold_probabilities(fanned, data, plans),
        fold_probabilities(sequential, data, plans),
        strict=True,
    ):
        np.testing.assert_allclose(fanned_out, one_task, atol=1e-6, rtol=0)
    assert [m.fold for m in fanned.models.order_by("fold")] == ["0", "1", "2"]
    left = run_files(media, fanned)
    assert {"fold-0.pt", "fold-1.pt", "fold-2.pt"} <= set(left)
    assert not [name for name in left if name.endswith(".npz")]  # the results went to the report
    assert fanned.progress["fraction"] == 1.0 and fanned.progress["folds_done"] == 3
    assert sorted(fanned.progress["curves"]) == ["0", "1", "2"]


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_cancelling_a_fanned_out_run_stops_its_folds_at_once(three_patients, data_scientist, media):
    purge_queues(["training"])
    worker, log = start_worker(["training"], media)
    try:
        run = runs.start_run(
            three_patients, data_scientist, {**FANNED, "max_epochs": 10000, "patience": 10000}
        )
        tasks.queue_run(run)
        training_fold = wait_until(
            lambda: FoldJob.objects.filter(
                run=run, status="running", progress__has_key="step"
            ).first(),
            90,
            "a fold training",
        )
        wait_until(
            lambda: "step" in TrainingRun.objects.get(pk=run.pk).progress, 5, "the run's progress"
        )
        progress = TrainingRun.objects.get(pk=run.pk).progress
        assert progress["folds"] == 3 and progress["folds_done"] == 0
        assert progress["folds_running"] == [training_fold.fold] and 0 < progress["fraction"] < 1
        answer = client_for(data_scientist).post(f"/api/v1/training-runs/{run.pk}/cancel/")
        assert answer.status_code == 200, answer.json()
        statuses = FoldJob.objects.filter(run=run).values_list("status", flat=True)
        assert set(statuses) == {"cancelled"}
        # The worker stops the fold within about a second, then passes over the other two.
        wait_until(
            lambda: (
                log.read_text(errors="replace").count("train_fold[") >= 6
                and log.read_text(errors="replace").count("succeeded") >= 4
            ),
            3,
            "the fold tasks ended",
        )
    finally:
        stop_worker(worker)
    run.refresh_from_db()
    assert run.status == "cancelled" and run.error == "Cancelled by its user."
    assert not FoldModel.objects.filter(run=run).exists() and run_files(media, run) == []


@pytest.mark.django_db
def test_a_failing_fold_fails_the_run_naming_the_fold(three_patients, data_scientist, tmp_path):
    purge_queues(["training"])
    run = runs.start_run(
        three_patients, data_scientist, {**FANNED, "pretrained": str(tmp_path / "no.pt")}
    )
    assert runs.execute(run.pk).status == "running"
    run.refresh_from_db()
    assert run.lease_owner == fanout.FOLD_JOBS and run.lease_expires_at is None
    jobs = list(FoldJob.objects.filter(run=run))
    assert [(job.fold, job.status) for job in jobs] == [(f, "queued") for f in "012"]
    assert queued_messages("training") == 3
    purge_queues(["training"])
    assert fanout.run_fold_job(jobs[1].pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith("Fold 1: ") and "no.pt" in run.error
    assert [job.status for job in FoldJob.objects.filter(run=run)] == [
        "cancelled",
        "failed",
        "cancelled",
    ]
    assert fanout.run_fold_job(jobs[0].pk) == "cancelled"  # a late delivery trains nothing
    assert runs.execute(run.pk).status == "failed" and not run.models.exists()
    with pytest.raises(DomainError, match="fan_out trains each fold in one process"):
        runs.start_run(three_patients, data_scientist, {**FANNED, "processes": 2})


@pytest.mark.django_db
def test_a_fold_whose_worker_died_out_of_attempts_or_shut_down_ends_the_run_saying_so(
    three_patients, data_scientist, media, settings
):
    settings.JOB_MAX_ATTEMPTS = 2
    purge_queues(["training"])
    run = runs.start_run(three_patients, data_scientist, FANNED)
    runs.execute(run.pk)
    purge_queues(["training"])
    first, second, third = FoldJob.objects.filter(run=run)
    _orphan(FoldJob, first, attempts=1)
    _orphan(FoldJob, second, attempts=2)
    weights = media / f"training/run-{run.pk}/fold-{second.fold}.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"half the weights")
    recovered = sorted(leases.recover_orphans())
    label = "fold of a training run"
    assert (label, second.pk, "failed") in recovered and not weights.exists()
    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith(f"Fold {second.fold}: The worker ")
    assert "dead-host:4242" in run.error
    states = dict(FoldJob.objects.filter(run=run).values_list("fold", "status"))
    assert states == {first.fold: "cancelled", second.fold: "failed", third.fold: "cancelled"}

    # A worker shut down (and killed in its shutdown, as `make run` does) stops its fold and
    # the run, with the sentence a sequential run gets.
    run = runs.start_run(three_patients, data_scientist, FANNED)
    runs.execute(run.pk)
    purge_queues(["training"])
    job = FoldJob.objects.filter(run=run).first()
    FoldJob.objects.filter(pk=job.pk).update(
        status="running",
        lease_owner="host:1:a",
        lease_expires_at=in_a_minute(),
        progress={"fold": job.fold, "fold_number": 1, "folds": 3, "epoch": 2},
    )
    shutdown = "its worker was shut down"
    kind = leases.kind_of(FoldJob)
    assert leases.end_stopped(kind, job.pk, "host:1:a", shutdown) == "cancelled"
    run.refresh_from_db()
    assert run.status == "cancelled" and run.error == (
        "Stopped because its worker was shut down during fold 1 of 3, epoch 2; start it again "
        "to train."
    )
    assert set(FoldJob.objects.filter(run=run).values_list("status", flat=True)) == {"cancelled"}
