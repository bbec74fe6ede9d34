"""Data-parallel training (DDP, gloo on the CPU) launched by torchrun from the training task:
two processes take the steps one process takes on the same global batch, and cancel ends
every rank."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.core.files.storage import default_storage

from datasets import splits
from mltasks import pipeline, run_config, runs, training
from mltasks.models import TrainingRun

from .conftest import client_for
from .test_training import _wait
from .workers import celery_worker, purge_queues, start_worker, stop_worker

# One fold, one epoch of a few steps at 32 px; no augmentation (its random draws are per
# process), a learning rate that moves the weights well beyond float rounding.
BASE = {
    "image_size": 32,
    "batch_size": 8,
    "micro_batch_size": 4,
    "max_epochs": 1,
    "oversample_to": 8,
    "rotate": False,
    "flip": False,
    "learning_rate": 0.001,
    "saliency_samples": 0,
    "threads": 1,
    "export_models": False,
}


def _start(user, split, config: dict) -> int:
    response = client_for(user).post(
        "/api/v1/training-runs/", {"split": split.pk, "config": config}, format="json"
    )
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def _learnt(state: dict) -> dict[str, torch.Tensor]:
    """A model's learnt parameters (batch norm's running statistics left out: each process
    keeps its own, DDP sends the leader's)."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


def _parameters(run: TrainingRun) -> dict[str, torch.Tensor]:
    """The learnt parameters of the run's one fold model."""
    (model,) = run.models.all()
    with default_storage.open(model.weights, "rb") as handle:
        return _learnt(torch.load(io.BytesIO(handle.read()), weights_only=True)["state_dict"])


def _distance(a: dict, b: dict) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)))


def _ranks_of(run_id: int) -> list[int]:
    """Processes of this machine running a rank of the run (torchrun itself left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            rank = b"train_rank" in words and b"torch.distributed.run" not in words
            if rank and str(run_id).encode() in words:
                found.append(int(entry.name))
    return found


def test_ranks_share_each_global_batch_as_one_process_would_take_it():
    order = list(range(21))
    whole = [len(b) for b in pipeline.RankBatches(order, 8, 0, 1)]
    assert whole == [8, 8, 5] == pipeline.global_batch_sizes(21, 8)
    shares = [list(pipeline.RankBatches(order, 8, rank, 2)) for rank in (0, 1)]
    for step, size in enumerate(pipeline.global_batch_sizes(21, 8, 2)):
        assert sorted(shares[0][step] + shares[1][step]) == order[step * 8 : step * 8 + size]
    assert pipeline.global_batch_sizes(17, 8, 2) == [8, 8]  # a last image alone is left out
    assert len(pipeline.RankBatches(list(range(17)), 8, 1, 2)) == 2


def test_processes_and_hosts_are_checked_and_counted_in_the_memory_estimate():
    from core.errors import DomainError
    from mltasks import memory

    with pytest.raises(DomainError, match="processes must be a whole number from 1 to 64"):
        run_config.load_config({"processes": 0})
    with pytest.raises(DomainError, match="hosts must be"):
        run_config.load_config({"hosts": "two"})
    one = memory.estimate(100, 5, run_config.load_config(), "cpu")
    four = memory.estimate(100, 5, run_config.load_config({"processes": 4}), "cpu")
    assert four.total == 4 * one.total and "4 processes, each" in four.describe()


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_two_gloo_processes_reach_the_weights_of_one_process_on_the_same_batches(
    study, curated, split, data_scientist
):
    fold = next(name for name in splits.fold_names(split))
    config = run_config.load_config({**BASE, "folds": [fold]})
    with celery_worker(("training",), Path(settings.MEDIA_ROOT)):
        ddp_id = _start(data_scientist, split, {**BASE, "folds": [fold], "processes": 2})
        # Meanwhile, the same fold trained by one process, as a run's worker trains it.
        data = training.load_data(split, config["image_size"])
        (plan,) = training.fold_plans(split, data, config)
        cpu = torch.device("cpu")
        torch.manual_seed(config["seed"])
        start = _learnt(training._new_model(config, len(data.classes), cpu).state_dict())
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each rank: the same order of floating-point sums
        try:
            single = training.train_fold(data, plan, config, cpu, lambda _: None, lambda: False)
        finally:
            torch.set_num_threads(threads)
        ddp = _wait(ddp_id, {"done", "failed", "cancelled"})
    assert ddp.status == "done", ddp.error
    assert ddp.device.startswith("2 x cpu") and ddp.device.endswith("DDP"), ddp.device
    assert ddp.progress["fraction"] == 1.0 and ddp.progress["curves"], ddp.progress
    assert sum(ddp.report["per_class"][c]["images"] for c in ddp.report["classes"]) == len(
        plan.test
    )
    (model,) = ddp.models.all()
    assert model.epochs == single.epochs == 1

    learnt, shared = _learnt(single.state_dict), _parameters(ddp)
    moved = _distance(learnt, start)
    assert moved > 0.1  # the steps changed the weights, far beyond rounding
    assert _distance(shared, learnt) < 0.01 * moved
    assert _ranks_of(ddp_id) == []
    assert not list((Path(settings.VAR_DIR) / "ranks").glob(f"run-{ddp_id}-*"))


def _wait_for_a_step(run_id: int) -> None:
    deadline = time.monotonic() + 120
    while not TrainingRun.objects.get(pk=run_id).progress.get("step"):
        run = TrainingRun.objects.get(pk=run_id)
        assert run.status in ("queued", "running"), run.error
        assert time.monotonic() < deadline, f"no step yet: {run.status} {run.progress}"
        time.sleep(0.2)


def _wait_for_no_ranks(run_id: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _ranks_of(run_id):
        assert time.monotonic() < deadline, "the ranks outlived their run"
        time.sleep(0.2)


LONG = {**BASE, "max_epochs": 50, "oversample_to": 64, "patience": 50}


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_run_across_two_hosts_trains_with_the_joined_host_and_cancel_ends_both(
    study, curated, split, data_scientist
):
    from .workers import database_url

    rendezvous = f"127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "TRAINING_RENDEZVOUS": rendezvous,
    }
    media = Path(settings.MEDIA_ROOT)
    with celery_worker(("training",), media, {"TRAINING_RENDEZVOUS": rendezvous}):
        run_id = _start(data_scientist, split, {**LONG, "hosts": 2})
        joined = subprocess.Popen(
            [sys.executable, "manage.py", "join_training", "--run", str(run_id), "--wait", "60"],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_a_step(run_id)
            run = TrainingRun.objects.get(pk=run_id)
            assert run.device.startswith("2 x cpu"), run.device
            assert len(_ranks_of(run_id)) == 2  # one on each "host"
            runs.request_cancel(run)
            _wait_for_no_ranks(run_id, 30)
            joined.wait(30)
        finally:
            if joined.poll() is None:
                joined.kill()
            output = joined.communicate()[0].decode(errors="replace")
        run = TrainingRun.objects.get(pk=run_id)
    assert f"This host's processes of run {run_id} ended" in output, output[-3000:]
    assert run.status == "cancelled" and run.error == "Cancelled by its user."
    assert not run.models.exists()
    assert not (media / f"training/run-{run_id}").exists() or not any(
        (media / f"training/run-{run_id}").rglob("*")
    )


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_the_ranks_of_a_killed_worker_end_and_its_run_is_recovered(
    study, curated, split, data_scientist
):
    lease = {"JOB_LEASE_SECONDS": "2"}
    media = Path(settings.MEDIA_ROOT)
    purge_queues(["training"])
    first, _ = start_worker(["training"], media, lease, name="first")
    try:
        run_id = _start(data_scientist, split, {**LONG, "processes": 2})
        _wait_for_a_step(run_id)
        assert len(_ranks_of(run_id)) == 2
    finally:
        first.kill()
        first.wait()
    _wait_for_no_ranks(run_id, 20)  # torchrun got the parent-death signal and ended them
    assert TrainingRun.objects.get(pk=run_id).status == "running"

    second, _ = start_worker(["training"], media, {**lease, "JOB_MAX_ATTEMPTS": "1"}, "second")
    try:
        deadline = time.monotonic() + 30
        while (run := TrainingRun.objects.get(pk=run_id)).status == "running":
            assert time.monotonic() < deadline, "the orphaned run was not recovered"
            time.sleep(0.2)
    finally:
        stop_worker(second)
    assert run.status == "failed" and "worker running this training run stopped" in run.error
    assert not run.models.exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
