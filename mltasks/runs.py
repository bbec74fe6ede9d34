"""Training runs: start, run (the Celery task calls `execute`), cancel, and publish.

A run's fold models are published (FoldModel rows) only when every fold finished and the
report is written, in one transaction; a failed or cancelled run removes the weight files it
stored and publishes nothing.

Starting and cancelling a run is what the web process does, without torch; the training modules
(torch) are imported by `execute`, in the process that trains.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from annotator.access import OVERSEEING_ROLES, require_role
from core import failures, leases
from core.errors import DomainError
from core.storage import store_bytes
from datasets.models import Split

from . import export, launch, memory, run_config, tracking
from .models import FoldModel, TrainingRun

if TYPE_CHECKING:
    import torch

    from .distributed import Ranks

log = logging.getLogger(__name__)
PROGRESS_EVERY_SECONDS = 0.5
# Steps left out of the time-left estimate: the first ones also load data, build the model and
# warm the device up, and are several times slower than the rest.
WARMUP_STEPS = 3


def code_version() -> str:
    """The git commit of the code that trains, where it is a checkout; else the package's."""
    root = Path(settings.BASE_DIR)
    try:
        found = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return f"git {found.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"cytomark {version('cytomark')}"
        except PackageNotFoundError:
            return "unknown"


def start_run(split: Split, user, config: dict | None = None) -> TrainingRun:
    """A queued run with its full config (the caller queues the task once committed)."""
    if user is not None:
        require_role(user, split.dataset.study, OVERSEEING_ROLES, "train models")
    full = run_config.load_config(config)
    if len(split.dataset.classes) < 2:
        raise DomainError("Training needs at least two classes in the data set.", "split")
    needed = memory.estimate(
        len(split.dataset.manifest),
        len(split.dataset.classes),
        full,
        run_config.estimated_device_type(full),
    )
    memory.require_within(needed, settings.TRAINING_MAX_MEMORY_GB)
    return TrainingRun.objects.create(split=split, config=full, created_by=user)


def request_cancel(run: TrainingRun) -> TrainingRun:
    """End a queued, running or orphaned run at once (cancelled); a live worker training it
    notices within a second that it lost the run, stops, and removes what it stored."""
    if not leases.cancel(
        TrainingRun,
        run.pk,
        TrainingRun.Status.CANCELLED,
        cancel_requested=True,
        error="Cancelled by its user.",
    ):
        run.refresh_from_db()
        raise DomainError(f"Run {run.pk} has ended ({run.status}); nothing to cancel.")
    run.refresh_from_db()
    return run


def remove_partials(run: TrainingRun) -> None:
    """Delete what attempts of an unpublished run stored (weights, plots, partial files), once
    its fold jobs (a fanned-out run's) are cancelled, so that their workers stop writing."""
    from . import fanout

    fanout.cancel_fold_jobs(run)
    if not run.models.exists():
        leases.remove_tree(f"training/run-{run.pk}")


@dataclass
class StepTimes:
    """The measured durations of a run's training steps, for the time it has left: the mean
    time per step after the first `warmup` steps, times the steps left. The time between two
    steps includes the validation and the next fold's start that fall between them, so the
    mean covers them too. Kept as a count and a sum: a run may take a million steps."""

    warmup: int = WARMUP_STEPS
    steps: int = 0
    measured_seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.steps += 1
        if self.steps > self.warmup:
            self.measured_seconds += seconds

    def remaining(self, steps_left: int) -> float | None:
        """Seconds left for `steps_left` more steps; None before any step past the warm-up."""
        measured = self.steps - self.warmup
        if measured <= 0:
            return None
        return self.measured_seconds / measured * max(0, steps_left)


class Progress:
    """Writes progress to the run at most every half second, with the time left."""

    def __init__(
        self,
        run: TrainingRun,
        folds: int,
        config: dict,
        lease: leases.Lease,
        tracker: tracking.Tracker | None = None,
    ):
        self.run, self.folds, self.config, self.lease = run, folds, config, lease
        self.tracker = tracker
        self.curves = tracking.Curves()
        self.started = time.monotonic()
        self.last_step = self.started
        self.last_write = 0.0
        self.last_check = 0.0
        self.state: dict = {"folds": folds, "eta_seconds": None, "curves": self.curves.folds}
        self.fold_index = 0
        self.step_times = StepTimes()

    def next_fold(self, index: int) -> None:
        self.fold_index = index
        self.state["fold_number"] = index + 1
        self.state.pop("epoch", None)

    def __call__(self, update: dict) -> None:
        now = time.monotonic()
        self.curves.record(update)
        if "validation" in update and self.tracker:
            self.tracker.epoch(update["fold"], update["epoch"], update["validation"])
        self.state.update(update)
        self.state["fold_number"] = self.fold_index + 1
        self.state["fraction"] = self._fraction()
        self.state["elapsed_seconds"] = round(now - self.started, 1)
        if "step" in update:
            self.step_times.add(now - self.last_step)
            self.last_step = now
            left = self.step_times.remaining(self._steps_left())
            self.state["eta_seconds"] = None if left is None else round(left, 1)
        if now - self.last_write >= PROGRESS_EVERY_SECONDS or "validation" in update:
            self.write()
            self.last_write = now

    def write(self) -> None:
        """The progress onto the job's row (a fanned-out fold also sums it up on its run)."""
        self.lease.mine().update(progress=dict(self.state))

    def _steps_done_and_total(self) -> tuple[int, int]:
        """Steps of the run done and in all, at the current fold's steps per epoch and the
        config's epochs (early stopping may end a fold sooner: the total is a bound)."""
        epochs = self.config["max_epochs"]
        steps = self.state.get("steps") or 1
        epoch = self.state.get("epoch", 1)
        done = (self.fold_index * epochs + epoch - 1) * steps + self.state.get("step", 0)
        return done, self.folds * epochs * steps

    def _steps_left(self) -> int:
        done, total = self._steps_done_and_total()
        return total - done

    def _fraction(self) -> float:
        done, total = self._steps_done_and_total()
        return min(1.0, done / total)

    def should_stop(self) -> bool:
        if leases.shutdown_reason():
            return True
        now = time.monotonic()
        if now - self.last_check < PROGRESS_EVERY_SECONDS:
            return False
        self.last_check = now
        return self.cancelled()

    def cancelled(self) -> bool:
        """Whether the run was cancelled or is not this worker's any more (one query)."""
        return not self.lease.held() or self.lease.mine().filter(cancel_requested=True).exists()


class _Following:
    """A follower's progress in a data-parallel run: the leader writes the run's progress and
    decides when all stop (`mltasks.distributed.end_of_step`)."""

    state: dict = {}

    def next_fold(self, index: int) -> None:
        pass

    def __call__(self, update: dict) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def execute(run_id: int) -> TrainingRun:
    """Run the training of a queued run to its end: done, failed or cancelled; or, with
    `fan_out` and several folds, until its folds are queued as tasks of their own
    (mltasks.fanout), the last of which ends it.

    Claimed in one statement (core.leases): a task delivered twice trains once, and one
    delivered again after its worker died trains from the start.
    """
    import torch

    from . import training

    run = TrainingRun.objects.select_related("split__dataset__study").get(pk=run_id)
    config = run.config
    device = training.pick_device(config)
    if not run_config.distributed(config) and config["threads"]:
        torch.set_num_threads(config["threads"])  # before the run's device is described
    owner = leases.new_owner()
    attempt = leases.claim(
        TrainingRun,
        run.pk,
        [TrainingRun.Status.QUEUED],
        owner,
        started_at=timezone.now(),
        device=_describe(device),
        code_version=code_version(),
    )
    if attempt is None:
        run.refresh_from_db()
        return run
    with leases.Lease(TrainingRun, run.pk, owner) as lease:
        if run_config.distributed(config):
            _supervise(run, config, lease)
        else:
            # A run with fan_out is not tracked in MLflow: its folds train in other processes.
            fanned = config.get("fan_out")
            tracker = tracking.Tracker(run.pk, "") if fanned else tracking.Tracker.start(run.pk)
            _train(run, config, device, lease, tracker)
            tracker.finish()
    run.refresh_from_db()
    return run


def _supervise(run: TrainingRun, config: dict, lease: leases.Lease) -> None:
    """A data-parallel run: its ranks (torchrun) train and record its end while this worker
    renews the lease; they are stopped when the run is cancelled or this worker shuts down. If
    they end without recording it (killed, or a follower failed), the run ends here."""

    def should_stop() -> bool:
        if leases.shutdown_reason():
            return True
        return not lease.held() or lease.mine().filter(cancel_requested=True).exists()

    command = launch.torchrun_command(run.pk, config, lease.owner)
    ended = launch.run_ranks(run.pk, command, config, should_stop)
    progress = TrainingRun.objects.get(pk=run.pk).progress
    if reason := leases.shutdown_reason():
        status, message = TrainingRun.Status.CANCELLED, stopped_message(reason, position(progress))
    else:
        status = TrainingRun.Status.FAILED
        message = ended.error or (
            f"The training run failed{position(progress)}: its training processes ended with "
            f"exit code {ended.code}; the training worker's log has their output."
        )
    if not lease.finish(status=status, error=message[:4000], finished_at=timezone.now()):
        run.refresh_from_db()  # the ranks recorded the run's end, or it was cancelled
    if run.status != TrainingRun.Status.DONE:
        remove_partials(run)


def train_rank(run_id: int, owner: str) -> bool:
    """One process of a data-parallel run (`manage.py train_rank`, started by torchrun): trains
    its share; the leader also tracks, stores, reports and records the run's end, under the
    lease `owner` of the supervising worker (which renews it). Whether the run may go on
    (False: this rank failed or the leader recorded a failure, and torchrun ends the others)."""
    from . import distributed

    ranks = distributed.Ranks.from_env()
    run = TrainingRun.objects.select_related("split__dataset__study").get(pk=run_id)
    config = run.config
    device = distributed.device_for(config, ranks)
    lease = leases.Lease(TrainingRun, run.pk, owner)
    distributed.start_group(ranks, device)
    try:
        if not ranks.leader:
            _train(run, config, device, lease, None, ranks)
            return True
        lease.mine().update(device=f"{ranks.world} x {_describe(device)}, DDP")
        tracker = tracking.Tracker.start(run.pk)
        _train(run, config, device, lease, tracker, ranks)
        tracker.finish()
        return not TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.FAILED).exists()
    except Exception as exc:  # a follower's failure: its sentence for the supervising worker
        log.exception("Rank %s of training run %s failed", ranks.rank, run.pk)
        distributed.record_error(ranks, failures.describe(exc, "The training run", ""))
        return False
    finally:
        distributed.end_group()


def prepare(run: TrainingRun, config: dict):
    """The run's data and fold plans, on a device the config allows (a worker's first steps,
    the same in every process that trains folds of the run)."""
    import torch

    from . import training

    training.check_device(config)
    if threads := launch.threads_per_process(config):
        torch.set_num_threads(threads)
    data = training.load_data(run.split, config["image_size"], config.get("patch_cache", "none"))
    try:
        return data, training.fold_plans(run.split, data, config)
    except Exception:
        data.close()
        raise


def train_and_store(
    run: TrainingRun, data, plan, config: dict, device, progress, should_stop, ranks=None
):
    """Train one fold (the leader of a data-parallel run, or its only process) and store its
    weights: (the result without weights, storage name, sha256). A fold's training depends on
    the config and its plan only (`train_fold` seeds everything at its start), not on the
    folds trained before it in the same process."""
    from . import distributed, training

    ranks = ranks or distributed.SINGLE
    result = training.train_fold(data, plan, config, device, progress, should_stop, ranks)
    payload = training.state_dict_bytes(result.state_dict, data.classes, config)
    name = f"training/run-{run.pk}/fold-{result.fold}.pt"
    store_bytes(name, payload)
    return result.without_weights(), name, hashlib.sha256(payload).hexdigest()


def _train(
    run: TrainingRun,
    config: dict,
    device,
    lease: leases.Lease,
    tracker: tracking.Tracker | None,
    ranks: Ranks | None = None,
) -> None:
    """Train the run's folds, report, export and publish (the leader of a data-parallel run,
    or its only process); a follower only trains, and raises what it cannot handle. With
    `fan_out` and several folds, queue them as tasks of their own instead (mltasks.fanout)."""
    from . import distributed, training

    ranks = ranks or distributed.SINGLE
    stored: list[str] = []
    progress = data = None
    try:
        data, plans = prepare(run, config)
        if config.get("fan_out") and len(plans) > 1:
            from . import fanout

            fanout.fan_out(run, plans, lease)
            return
        if ranks.leader:
            progress = Progress(run, len(plans), config, lease, tracker)
        else:
            progress = _Following()
        results = []
        for index, plan in enumerate(plans):
            progress.next_fold(index)
            if not ranks.leader:
                training.train_fold(
                    data, plan, config, device, progress, progress.should_stop, ranks
                )
                continue
            results.append(
                train_and_store(
                    run, data, plan, config, device, progress, progress.should_stop, ranks
                )
            )
            stored.append(results[-1][1])
        if ranks.leader:
            publish_report(run, data, results, device, lease, stored)
    except Exception as exc:  # each end recorded on the run in a sentence, errors logged in full
        if not ranks.leader:
            if isinstance(exc, training.Cancelled):
                return
            raise
        status, message = ending(run, exc, position(progress.state if progress else {}))
        record_end(run, lease, status, message, stored)
    finally:
        if data is not None:
            data.close()


def publish_report(run: TrainingRun, data, results, device, lease, stored: list[str]) -> None:
    """The report of the trained folds (`train_and_store`'s results, in the plans' order), the
    exports, and their publication with the run's end; what it stores is added to `stored`."""
    from . import report as reports

    if not lease.held():  # cancelled while the last fold ended: its files are gone
        raise leases.LeaseLost(f"Run {run.pk} is no longer this worker's.")
    folds = [result for result, _, _ in results]
    report = reports.build_report(run, data, folds, device, saliency_weights=results[0][1])
    stored.extend(report.pop("_files", []))
    if run.config["export_models"]:
        exported = export.export_run(run, [(r.fold, name) for r, name, _ in results], report)
        stored.extend(exported)
    _publish(run, results, report, lease)


def ending(run: TrainingRun, exc: Exception, where: str, what: str = "The training run"):
    """The status and sentence a run (or a fold of it: `what`) ends with after `exc`, raised
    `where` in it (`position`); called from the `except` block (errors are logged in full)."""
    from . import training

    if reason := leases.shutdown_reason():
        # Also an error raised by the shutdown itself (a second Ctrl-C interrupts a step).
        log.info("Training run %s stopped: %s", run.pk, reason, exc_info=True)
        return TrainingRun.Status.CANCELLED, stopped_message(reason, where)
    if isinstance(exc, training.Cancelled | leases.LeaseLost):
        return TrainingRun.Status.CANCELLED, "Cancelled by its user."
    log.exception("Training run %s failed", run.pk)
    return TrainingRun.Status.FAILED, failures.describe(exc, what, where)


def position(progress: dict) -> str:
    """Where a run's progress is, for a sentence: " during fold 2 of 3, epoch 4"."""
    if "fold_number" not in progress:
        return " while loading the patches"
    fold = f"fold {progress['fold_number']} of {progress['folds']}"
    if "epoch" not in progress:
        return f" at the start of {fold}"
    return f" during {fold}, epoch {progress['epoch']}"


def stopped_message(reason: str, where: str = "") -> str:
    """The sentence of a run stopped by a worker's shutdown (`reason`: who shut it down)."""
    return f"Stopped because {reason}{where}; start it again to train."


def _describe(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"


@transaction.atomic
def _publish(run: TrainingRun, results, report: dict, lease: leases.Lease) -> None:
    """The fold models and the report, in one transaction with the run's end; nothing if the
    run is not this worker's any more (cancelled meanwhile)."""
    if not lease.finish(
        status=TrainingRun.Status.DONE,
        report=report,
        finished_at=timezone.now(),
        progress={**TrainingRun.objects.get(pk=run.pk).progress, "fraction": 1.0},
    ):
        raise leases.LeaseLost(f"Run {run.pk} is no longer this worker's.")
    for result, name, digest in results:
        FoldModel.objects.create(
            run=run,
            fold=result.fold,
            weights=name,
            sha256=digest,
            classes=run.split.dataset.classes,
            metrics={"history": result.history},
            epochs=result.epochs,
            seconds=result.seconds,
        )


def record_end(
    run: TrainingRun, lease: leases.Lease, status: str, message: str, stored: list[str]
) -> None:
    """Record the run's end and remove what this attempt stored, while the run is still this
    worker's. Ended elsewhere, it was either cancelled (then nothing of it is kept) or taken
    over by another worker after this one's lease ran out: that attempt writes the same file
    names, so they are left to it."""
    if lease.finish(status=status, error=message[:4000], finished_at=timezone.now()):
        for name in stored:
            default_storage.delete(name)
        return
    run.refresh_from_db()
    if run.status in (TrainingRun.Status.CANCELLED, TrainingRun.Status.FAILED):
        remove_partials(run)
