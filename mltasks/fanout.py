"""Fanning a run's folds out (config `fan_out`): one Celery task per fold on the `training`
queue, taken by any training worker on any host; the last fold to finish gathers the report.

How a fanned-out run lives, and why it can never stay `running` for ever:

- `runs.execute` claims the run with a lease, loads its data and fold plans as always, and then
  `fan_out` creates a `FoldJob` per fold and, in the same transaction, hands the run over to
  them: its `lease_owner` becomes `FOLD_JOBS` and its `lease_expires_at` empty. From then on the
  run holds no lease of its own (no sweep takes it for an orphan while its folds wait for a
  worker, however long) and is kept alive by its fold jobs instead. Each is a leased job
  (core.leases): its worker's beat renews its lease, the sweep recovers it when its worker dies
  (queued again while attempts are left, else failed). A fold job is created with a lease of
  one length in the coordinator's name, so that if the coordinator dies before its task is
  sent, the sweep sends it (a task sent twice trains once: the claim decides); a fold that
  waits longer than that for a free worker is sent once more, which costs one spare message.
- Every way a fold job ends settles the run: failed (an error, or its worker gone for good) or
  stopped by its worker's shutdown, it ends the run failed with a sentence naming the fold (or
  cancelled with the shutdown's sentence) and its other fold jobs are cancelled; done, it
  stores its result, and the last one done (decided under `select_for_update` on the run)
  takes the run's lease under its own name and gathers: the report from the stored results,
  exports and publication with `runs.publish_report`, as a sequential run does. Should that
  worker die while gathering, the run's lease runs out and the run is recovered like any run.
- Cancelling the run cancels its fold jobs (`runs.remove_partials`); their workers see the
  lost lease at their next check, within about half a second of training.

Each fold trains on the same data and plan as in a sequential run and is seeded at its start,
so a fanned-out run gives the same report as the sequential one with the same config.
"""

from __future__ import annotations

import io
import json
import logging

from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from core import leases
from core.storage import store_bytes

from . import runs
from .models import FoldJob, TrainingRun

log = logging.getLogger(__name__)

# A fanned-out run's lease owner while its folds are out.
FOLD_JOBS = "fold jobs"
RUNNING, DONE = TrainingRun.Status.RUNNING, TrainingRun.Status.DONE
FAILED, CANCELLED = TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED
CANCELLED_WITH_RUN = "Cancelled with its run."
PROGRESS_KEYS = ("fold", "fold_number", "epoch", "step", "steps", "loss", "eta_seconds")


def fan_out(run: TrainingRun, plans, lease: leases.Lease) -> None:
    """Create a fold job per plan, hand the run over to them and send their tasks."""
    from .tasks import train_fold

    now = timezone.now()
    with transaction.atomic():
        FoldJob.objects.filter(run=run).delete()  # an earlier attempt's
        jobs = [
            FoldJob.objects.create(
                run=run,
                fold=plan.fold,
                position=index,
                lease_owner=lease.owner,
                lease_expires_at=now + leases.lease_length(),
            )
            for index, plan in enumerate(plans)
        ]
        progress = {"folds": len(plans), "folds_done": 0, "folds_running": [], "fraction": 0.0}
        if not lease.mine().update(lease_owner=FOLD_JOBS, lease_expires_at=None, progress=progress):
            raise leases.LeaseLost(f"Run {run.pk} is no longer this worker's.")
    for job in jobs:
        try:
            train_fold.delay(job.pk)
        except Exception:  # any broker error: the run ends with the reason, its folds cancelled
            log.warning("Could not queue fold %s of run %s", job.fold, run.pk, exc_info=True)
            end_run(
                run.pk,
                FAILED,
                "Could not queue its folds: the task broker did not answer. Start it again once "
                "the broker is back; the details are in the worker's log.",
            )
            return


def run_fold_job(job_id: int) -> str:
    """Train a queued fold job (the `train_fold` task); its state after. A fold job that is not
    queued any more (done, cancelled, held by a live worker) is left as it is."""
    job = FoldJob.objects.select_related("run__split__dataset__study").filter(pk=job_id).first()
    if job is None:  # its run was started again meanwhile, with fold jobs of its own
        return "gone"
    owner = leases.new_owner()
    if leases.claim(FoldJob, job.pk, [FoldJob.Status.QUEUED], owner) is not None:
        with leases.Lease(FoldJob, job.pk, owner) as lease:
            _train(job, lease)
    return FoldJob.objects.filter(pk=job.pk).values_list("status", flat=True).first() or "gone"


def _train(job: FoldJob, lease: leases.Lease) -> None:
    from . import training

    run, config = job.run, job.run.config
    device = training.pick_device(config)
    data = progress = gatherer = None
    stored: list[str] = []
    try:
        try:
            data, plans = runs.prepare(run, config)
            (plan,) = [plan for plan in plans if plan.fold == job.fold]
            progress = FoldProgress(run, len(plans), config, lease)
            progress.next_fold(job.position)
            result, weights, digest = runs.train_and_store(
                run, data, plan, config, device, progress, progress.should_stop
            )
            stored.append(weights)
            stored.append(_store_result(run, result, weights, digest))
            gatherer = _finish(job, lease, stored[-1], progress)
        except Exception as exc:  # each end recorded on the fold job and its run
            _end(job, lease, exc, progress, stored)
        if gatherer:
            _gather(run, data, device, gatherer)
    finally:
        if data is not None:
            data.close()


class FoldProgress(runs.Progress):
    """A fold job's progress on its row, summed up on its run (folds done and running, the
    fraction of all, every fold's curves); it stops when the fold job or its run ended."""

    def write(self) -> None:
        super().write()
        write_run_progress(self.run.pk, self.state)

    def _steps_done_and_total(self) -> tuple[int, int]:
        epochs = self.config["max_epochs"]
        steps = self.state.get("steps") or 1
        done = (self.state.get("epoch", 1) - 1) * steps + self.state.get("step", 0)
        return done, epochs * steps

    def cancelled(self) -> bool:
        # A run that ends (cancelled, or failed by another fold) cancels its fold jobs.
        return not self.lease.held()


def write_run_progress(run_id: int, current: dict) -> None:
    """The run's progress from its fold jobs' (one query), with the fold that wrote last."""
    jobs = list(FoldJob.objects.filter(run_id=run_id).values_list("fold", "status", "progress"))
    shares = [
        1.0 if status == DONE else (progress or {}).get("fraction", 0.0) if status == RUNNING else 0
        for _, status, progress in jobs
    ]
    summary = {key: current[key] for key in PROGRESS_KEYS if key in current}
    summary.update(
        folds=len(jobs),
        folds_done=sum(status == DONE for _, status, _ in jobs),
        folds_running=[fold for fold, status, _ in jobs if status == RUNNING],
        fraction=sum(shares) / max(1, len(jobs)),
        curves={
            fold: curve
            for _, _, progress in jobs
            for fold, curve in (progress or {}).get("curves", {}).items()
        },
    )
    TrainingRun.objects.filter(pk=run_id, status=RUNNING).update(progress=summary)


def _store_result(run: TrainingRun, result, weights: str, digest: str) -> str:
    """A trained fold's result (test predictions, history, parts) as one .npz in storage."""
    import numpy as np

    meta = {
        "fold": result.fold,
        "epochs": result.epochs,
        "seconds": result.seconds,
        "history": result.history,
        "parts": result.parts,
        "weights": weights,
        "sha256": digest,
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        test_index=result.test_index,
        probabilities=result.probabilities,
        meta=np.array(json.dumps(meta)),
    )
    name = f"training/run-{run.pk}/fold-{result.fold}-result.npz"
    store_bytes(name, buffer.getvalue())
    return name


def _load_result(job: FoldJob):
    """A done fold job's result as `runs.train_and_store` gave it: (result, weights, sha256)."""
    import numpy as np

    from .training import FoldResult

    with default_storage.open(job.result, "rb") as handle:
        stored = np.load(io.BytesIO(handle.read()), allow_pickle=False)
    meta = json.loads(str(stored["meta"]))
    result = FoldResult(
        meta["fold"],
        {},
        stored["test_index"],
        stored["probabilities"],
        meta["epochs"],
        meta["seconds"],
        meta["history"],
        meta["parts"],
    )
    return result, meta["weights"], meta["sha256"]


def _finish(job: FoldJob, lease: leases.Lease, result: str, progress: FoldProgress) -> str | None:
    """Record the fold job done; the owner under which this worker gathers the run when it was
    the last fold of it, else None. The run is locked meanwhile: one fold gathers."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=job.run_id)
        if run.status != RUNNING or run.lease_owner != FOLD_JOBS:
            raise leases.LeaseLost(f"Run {run.pk} ended while fold {job.fold} trained.")
        state = {**progress.state, "fraction": 1.0}
        if not lease.finish(status=DONE, result=result, progress=state, finished_at=timezone.now()):
            raise leases.LeaseLost(f"Fold {job.fold} of run {run.pk} is no longer this worker's.")
        write_run_progress(run.pk, state)
        if FoldJob.objects.filter(run=run).exclude(status=DONE).exists():
            return None
        owner = leases.new_owner()
        TrainingRun.objects.filter(pk=run.pk).update(
            lease_owner=owner, lease_expires_at=timezone.now() + leases.lease_length()
        )
        return owner


def _gather(run: TrainingRun, data, device, owner: str) -> None:
    """Build, export and publish the report of a run whose folds are all done, holding the
    run's lease; a failure ends the run as a sequential run's would, its files removed."""
    jobs = list(FoldJob.objects.filter(run=run).order_by("position"))
    stored = [job.result for job in jobs]
    with leases.Lease(TrainingRun, run.pk, owner) as lease:
        try:
            results = [_load_result(job) for job in jobs]
            stored.extend(name for _, name, _ in results)
            runs.publish_report(run, data, results, device, lease, stored)
        except Exception as exc:  # recorded on the run in a sentence, logged in full
            status, message = runs.ending(run, exc, " while writing the report")
            runs.record_end(run, lease, status, message, stored)
            run.refresh_from_db()
            if run.status != DONE and run.lease_owner == owner:  # not taken over meanwhile
                runs.remove_partials(run)
            return
    for job in jobs:  # published: the fold results are in the report and the models now
        default_storage.delete(job.result)


def _end(job: FoldJob, lease: leases.Lease, exc: Exception, progress, stored: list[str]) -> None:
    """Record a fold job's end after `exc` and settle its run (`settle`); what it stored goes.
    Ended elsewhere, it was cancelled (with its run: nothing of the run is kept) or taken over
    by another worker after this one's lease ran out (its files are left to it)."""
    where = runs.position(progress.state if progress else {})
    status, message = runs.ending(job.run, exc, where, what="The fold")
    if lease.finish(status=status, error=message[:4000], finished_at=timezone.now()):
        for name in stored:
            default_storage.delete(name)
        settle(FoldJob.objects.get(pk=job.pk))
        return
    run = TrainingRun.objects.get(pk=job.run_id)
    if run.status in (CANCELLED, FAILED):
        runs.remove_partials(run)


def settle(job: FoldJob) -> None:
    """End a fanned-out run whose fold job ended failed (the run fails, naming the fold) or
    cancelled (by its worker's shutdown: the run is cancelled with the same sentence). Nothing
    when the run is not fanned out any more (ended, or started again)."""
    if job.status == FAILED:
        end_run(job.run_id, FAILED, f"Fold {job.fold}: {job.error}")
    elif job.status == CANCELLED and job.error != CANCELLED_WITH_RUN:
        end_run(job.run_id, CANCELLED, job.error)


def end_run(run_id: int, status: str, message: str) -> bool:
    """End a run whose folds are out, its other fold jobs cancelled and its files removed;
    whether it was still fanned out."""
    ended = TrainingRun.objects.filter(pk=run_id, status=RUNNING, lease_owner=FOLD_JOBS).update(
        status=status, error=message[:4000], finished_at=timezone.now(), lease_expires_at=None
    )
    if ended:
        log.warning("Training run %s ended %s: %s", run_id, status, message)
        runs.remove_partials(TrainingRun.objects.get(pk=run_id))
    return bool(ended)


def cancel_fold_jobs(run: TrainingRun) -> None:
    """Cancel the run's unfinished fold jobs: their workers stop at their next check."""
    for pk in FoldJob.objects.filter(run=run, status__in=leases.UNFINISHED).values_list(
        "pk", flat=True
    ):
        leases.cancel(FoldJob, pk, CANCELLED, error=CANCELLED_WITH_RUN)


def released(job: FoldJob) -> None:
    """core.leases' clean-up of a fold job it released (cancelled, recovered, re-claimed):
    the fold's files of the ended attempt removed, and its run settled (`settle`)."""
    job = FoldJob.objects.get(pk=job.pk)
    for name in (
        f"training/run-{job.run_id}/fold-{job.fold}.pt",
        f"training/run-{job.run_id}/fold-{job.fold}-result.npz",
    ):
        default_storage.delete(name)
    settle(job)
