"""Leases of long background jobs: a job row names the worker holding it and until when.

A worker claims a job with one conditional UPDATE that sets it `running`, names itself in
`lease_owner` and sets `lease_expires_at` one lease length ahead; a thread of that worker renews
the lease while the job works. A worker killed in the middle (SIGKILL, out of memory, a lost
host) stops renewing, and once the lease has expired the job is *orphaned*. Orphans are found by
a sweep that every Celery worker runs when it starts and then once per lease length, and by a
task that is delivered again and finds its job orphaned. Either re-runs the job from the start
while it has attempts left (`JOB_MAX_ATTEMPTS`), and otherwise marks it failed with a message
saying that its worker stopped; both first remove the files the dead attempt left half-written.

Job models inherit `LeasedJob` and have the fields `status` (with the values "queued",
"running", "failed" among theirs), `error` and `finished_at`. Each app registers its job models
(`register`) with how to queue a job again and how to remove an attempt's partial files.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connections, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from core import failures, storage

log = logging.getLogger(__name__)

QUEUED, RUNNING, FAILED = "queued", "running", "failed"
UNFINISHED = (QUEUED, RUNNING)


class LeasedJob(models.Model):
    """The lease fields of a background job's row."""

    lease_owner = models.CharField(
        max_length=200, blank=True, help_text="The worker process that holds (or last held) it."
    )
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Unless renewed by then, its worker counts as stopped."
    )
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="How many times a worker has started it."
    )

    class Meta:
        abstract = True


@dataclass(frozen=True)
class JobKind:
    """A registered kind of job: its model, how to queue one again, how to clean up after one."""

    label: str
    model: type[LeasedJob]
    requeue: Callable[[int], None]
    remove_partials: Callable[[LeasedJob], None]
    # The sentence of a job stopped by its worker's shutdown, from the job and the reason
    # ("Cytomark was shut down (Ctrl-C)"); the job ends cancelled with it. None: such a job
    # is queued again instead (work nobody started by hand, like patch batches).
    stopped_message: Callable[[LeasedJob, str], str] | None = None


_kinds: dict[str, JobKind] = {}


def register(*kinds: JobKind) -> None:
    for kind in kinds:
        _kinds[kind.model._meta.label] = kind


def kind_of(model: type[LeasedJob]) -> JobKind:
    return _kinds[model._meta.label]


def lease_length() -> timedelta:
    return timedelta(seconds=settings.JOB_LEASE_SECONDS)


def max_attempts() -> int:
    return settings.JOB_MAX_ATTEMPTS


def new_owner() -> str:
    """A name for one attempt of this process: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def orphaned(queryset, now=None):
    """Jobs whose worker stopped renewing their lease."""
    now = now or timezone.now()
    return queryset.filter(status__in=UNFINISHED, lease_expires_at__lt=now)


def claim(model: type[LeasedJob], pk: int, claimable, owner: str, **fields) -> int | None:
    """Take the job for `owner` in one statement; the attempt number, or None when the job is
    not this caller's to run (finished, or held by a live worker).

    A job in one of the `claimable` states is taken, and so is an orphan with attempts left:
    a task delivered again after its worker died runs its job from the start. An orphan out of
    attempts is failed here, with the message a sweep would give it.
    """
    now = timezone.now()
    takeable = Q(status__in=claimable) | (
        Q(status__in=UNFINISHED, lease_expires_at__lt=now) & Q(attempts__lt=max_attempts())
    )
    taken = model.objects.filter(Q(pk=pk) & takeable).update(
        status=RUNNING,
        lease_owner=owner,
        lease_expires_at=now + lease_length(),
        attempts=F("attempts") + 1,
        error="",
        **fields,
    )
    if not taken:
        job = model.objects.filter(pk=pk).first()
        if job is not None and orphaned(model.objects.filter(pk=pk), now).exists():
            _fail_orphan(kind_of(model), job, now)
        return None
    attempt = model.objects.filter(pk=pk).values_list("attempts", flat=True).get()
    if attempt > 1:
        kind_of(model).remove_partials(model.objects.get(pk=pk))
    return attempt


class LeaseLost(Exception):
    """The job is not this worker's any more: cancelled, or taken over after a stall."""


class ShuttingDown(Exception):
    """This worker is shutting down: the job stops at its step and ends in a clear state."""


_shutdown_reason: list[str] = []


def stop_jobs(reason: str) -> None:
    """Ask the jobs of this process to stop at their next step, because (`reason`, e.g.
    "Cytomark was shut down (Ctrl-C)") the worker is shutting down. The first reason holds."""
    if not _shutdown_reason:
        _shutdown_reason.append(reason)


def shutdown_reason() -> str:
    """Why this process's jobs must stop, or "" while they may go on."""
    return _shutdown_reason[0] if _shutdown_reason else ""


def stop_if_shutting_down() -> None:
    """Raise ShuttingDown once this worker shuts down: called by jobs between their steps."""
    if _shutdown_reason:
        raise ShuttingDown(_shutdown_reason[0])


class Lease:
    """A claimed job's lease as held by this process; renewed by a thread while in use.

    Inside a database transaction (a test, or a caller's atomic block) the thread would not
    see the claimed row, so there the lease is held for its first length only.
    """

    def __init__(self, model: type[LeasedJob], pk: int, owner: str):
        self.model, self.pk, self.owner = model, pk, owner
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def mine(self):
        """The job's row while this process still holds it: filter writes through it."""
        return self.model.objects.filter(pk=self.pk, lease_owner=self.owner, status=RUNNING)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def renew(self) -> bool:
        renewed = self.mine().update(lease_expires_at=timezone.now() + lease_length())
        if not renewed:
            self._lost.set()
        return bool(renewed)

    def held(self) -> bool:
        """Whether the job is still this worker's (one query; also true before any renewal)."""
        if not self.lost and not self.mine().exists():
            self._lost.set()
        return not self.lost

    def finish(self, **fields) -> bool:
        """Write the job's end if it is still held; whether it was."""
        return bool(self.mine().update(lease_expires_at=None, **fields))

    def __enter__(self) -> Lease:
        if not transaction.get_connection().in_atomic_block:
            self._thread = threading.Thread(
                target=self._beat,
                name=f"lease-{self.model._meta.model_name}-{self.pk}",
                daemon=True,
            )
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        interval = settings.JOB_LEASE_SECONDS / 3
        try:
            while not self._stop.wait(interval):
                try:
                    if not self.renew():
                        return
                except Exception:  # a database hiccup: the next beat tries again
                    log.warning(
                        "Could not renew the lease of %s %s", self.model, self.pk, exc_info=True
                    )
        finally:
            connections.close_all()


def work_under_lease(
    model: type[LeasedJob],
    pk: int,
    work: Callable[[Lease, Callable[[], bool]], object],
    publish: Callable[[Lease, object], None],
    *,
    stopped: type[Exception],
    what: str,
) -> bool:
    """Claim a queued job and run `work(lease, should_stop)` under its lease; False when the
    job was not queued any more (another worker has it, or it ended).

    `work` asks `should_stop()` between steps (the job cancelled, its lease lost, the worker
    shutting down) and raises `stopped` then. Its result goes to `publish(lease, result)`, which
    writes what the job made together with its end (in one transaction that it rolls back when
    it fails). A job stopped by the worker's shutdown ends with the kind's stopped message; one
    cancelled or taken over is left as it is; any other exception, of `work` or of `publish`,
    fails the job with a sentence naming `what` (the log has the traceback).
    """
    owner = new_owner()
    if claim(model, pk, [QUEUED], owner, started_at=timezone.now(), progress={}) is None:
        return False
    with Lease(model, pk, owner) as lease:

        def should_stop() -> bool:
            return bool(shutdown_reason()) or not lease.held()

        try:
            publish(lease, work(lease, should_stop))
        except stopped:
            if reason := shutdown_reason():
                end_stopped(kind_of(model), pk, owner, reason)
        except Exception as exc:  # recorded on the job; the log has the traceback
            log.exception("The %s %s failed", what, pk)
            lease.finish(
                status=FAILED,
                error=failures.describe(exc, f"The {what}")[:4000],
                finished_at=timezone.now(),
            )
    return True


def stopped_sentence(job: LeasedJob, reason: str, unit: str, again: str) -> str:
    """The sentence of a job stopped because its worker shut down, saying how far it got from
    its progress ("{unit}_done" of "{unit}") and what starting it again does."""
    progress = job.progress or {}
    where = ""
    if progress.get(unit):
        where = f" after {progress.get(f'{unit}_done', 0)} of {progress[unit]} {unit}"
    return f"Stopped because {reason}{where}; start it again to {again}."


def queue_on_commit(task, model: type[LeasedJob], pk: int, noun: str) -> None:
    """Send a job's Celery task once the transaction commits; an unreachable broker fails the
    still-queued job with the reason instead of leaving it queued for ever."""

    def send() -> None:
        try:
            task.delay(pk)
        except Exception:  # any broker error: recorded on the job, in full in the log
            log.warning("Could not queue %s %s", noun, pk, exc_info=True)
            model.objects.filter(pk=pk, status=QUEUED).update(
                status=FAILED,
                finished_at=timezone.now(),
                error=f"Could not queue the {noun}: the task broker did not answer. Start it "
                "again once the broker is back; the details are in the web server's log.",
            )

    transaction.on_commit(send)


class ThrottledProgress:
    """A job's `progress` callback (done, total): writes "{unit}_done", "{unit}", the fraction
    and the seconds since it began onto the job's row, at most every half second and at the
    end, so that a fast loop does not write a row per step."""

    EVERY_SECONDS = 0.5

    def __init__(self, lease: Lease, unit: str):
        self.lease = lease
        self.unit = unit
        self.last_write = 0.0
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last_write >= self.EVERY_SECONDS or done == total:
            self.last_write = now
            state = {
                f"{self.unit}_done": done,
                self.unit: total,
                "fraction": round(done / total, 4) if total else 1.0,
                "elapsed_seconds": round(now - self.started, 1),
            }
            self.lease.mine().update(progress=state)


def _release(kind: JobKind, job: LeasedJob, held: models.QuerySet, **fields) -> bool:
    """Write a job's new state through `held` (its row while still in the state it is taken
    from) and drop its lease; its partial files are removed once it is. Whether it was."""
    if not held.update(lease_expires_at=None, **fields):
        return False
    kind.remove_partials(job)
    return True


def _still_orphaned(kind: JobKind, job: LeasedJob, now) -> models.QuerySet:
    """The job's row while it is still the orphan of the worker last seen holding it."""
    return orphaned(kind.model.objects.filter(pk=job.pk, lease_owner=job.lease_owner), now)


def _fail_orphan(kind: JobKind, job: LeasedJob, now) -> bool:
    message = (
        f"The worker running this {kind.label} stopped (no heartbeat from {job.lease_owner or 'it'}"
        f" since {(job.lease_expires_at - lease_length()):%Y-%m-%d %H:%M:%S} UTC); it was "
        f"started {job.attempts} time(s) and is not retried again. Start it anew once the cause "
        "(often memory) is dealt with."
    )
    held = _still_orphaned(kind, job, now)
    if not _release(kind, job, held, status=FAILED, error=message, finished_at=now):
        return False
    log.warning("%s %s failed: %s", kind.label, job.pk, message)
    return True


def recover(kind: JobKind, job: LeasedJob, now=None) -> str | None:
    """Recover one orphan: queued again if it has attempts left, else failed; its partial files
    removed. The new state, or None when the job was not (or no longer) orphaned."""
    now = now or timezone.now()
    if job.attempts >= max_attempts():
        return FAILED if _fail_orphan(kind, job, now) else None
    if not _release(kind, job, _still_orphaned(kind, job, now), status=QUEUED):
        return None
    log.warning("%s %s: its worker %s stopped; queued again", kind.label, job.pk, job.lease_owner)
    return _send_again(kind, job.pk)


def _send_again(kind: JobKind, pk: int) -> str:
    """Send a job set back to queued to its queue; failed with the reason if that fails."""
    try:
        kind.requeue(pk)
    except Exception:  # any broker error: recorded on the job, never left queued unsent
        log.warning("Could not queue %s %s again", kind.label, pk, exc_info=True)
        kind.model.objects.filter(pk=pk, status=QUEUED).update(
            status=FAILED,
            error="Its worker stopped and it could not be queued again: the task broker did "
            "not answer. Start it anew; the details are in the worker's log.",
        )
        return FAILED
    return QUEUED


def recover_orphans() -> list[tuple[str, int, str]]:
    """One sweep over every registered kind: (label, id, new state) of each job recovered."""
    now = timezone.now()
    recovered = []
    for kind in _kinds.values():
        for job in orphaned(kind.model.objects.all(), now):
            state = recover(kind, job, now)
            if state:
                recovered.append((kind.label, job.pk, state))
    return recovered


def cancel(model: type[LeasedJob], pk: int, status: str, **fields) -> bool:
    """End a queued, running or orphaned job at once in `status`; its worker, if alive, sees
    that it lost the lease and stops. Whether the job was unfinished."""
    job = model.objects.filter(pk=pk).first()
    if job is None:
        return False
    held = model.objects.filter(pk=pk, status__in=UNFINISHED)
    return _release(kind_of(model), job, held, status=status, finished_at=timezone.now(), **fields)


def end_stopped(kind: JobKind, pk: int, owner: str, reason: str) -> str | None:
    """End a job that `owner` held when its worker shut down for `reason`: cancelled with the
    kind's sentence, or queued again; its partial files removed. The new state, or None when
    the job was not (or no longer) that owner's."""
    job = kind.model.objects.filter(pk=pk).first()
    if job is None:
        return None
    held = kind.model.objects.filter(pk=pk, lease_owner=owner, status=RUNNING)
    if kind.stopped_message is None:
        return _send_again(kind, pk) if _release(kind, job, held, status=QUEUED) else None
    error = kind.stopped_message(job, reason)[:4000]
    ended = _release(kind, job, held, status="cancelled", error=error, finished_at=timezone.now())
    return "cancelled" if ended else None


def end_jobs_of_process(pid: int, reason: str) -> list[tuple[str, int, str]]:
    """End the running jobs of a worker process of this host that was killed while it shut
    down (`make run` kills a worker that does not stop in time): each as `end_stopped` would,
    without waiting for its lease to run out. (label, id, new state) of each."""
    prefix = f"{socket.gethostname()}:{pid}:"
    ended = []
    for kind in _kinds.values():
        for job in kind.model.objects.filter(status=RUNNING, lease_owner__startswith=prefix):
            state = end_stopped(kind, job.pk, job.lease_owner, reason)
            if state:
                ended.append((kind.label, job.pk, state))
    return ended


def start_sweeper() -> threading.Thread:
    """Sweep for orphans now and once per lease length, in a thread of this worker process."""

    def sweep_forever() -> None:
        while True:
            try:
                for label, pk, state in recover_orphans():
                    log.info("Recovered %s %s: now %s", label, pk, state)
            except Exception:  # the database may be away for a while; the next sweep retries
                log.warning("The sweep for orphaned jobs failed", exc_info=True)
            finally:
                connections.close_all()
            time.sleep(settings.JOB_LEASE_SECONDS)

    thread = threading.Thread(target=sweep_forever, name="orphaned-job-sweeper", daemon=True)
    thread.start()
    return thread


def remove_files(folder: str, matches: Callable[[str], bool], keep: str = "") -> None:
    """Delete the files directly in a storage folder whose names match (but not `keep`)."""
    try:
        _, files = default_storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        path = f"{folder}/{name}"
        if matches(name) and path != keep:
            default_storage.delete(path)


def remove_tree(folder: str) -> None:
    """Delete a storage folder's files, its subfolders' too."""
    try:
        folders, files = default_storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in files:
        default_storage.delete(f"{folder}/{name}")
    for name in folders:
        remove_tree(f"{folder}/{name}")


def remove_stale_partials(folder: Path, older_than: timedelta) -> None:
    """Delete `.part` files in a local folder untouched for longer than `older_than`: files
    written in one go by a process that died before renaming them into place."""
    storage.remove_untouched(folder, timezone.now() - older_than, "*.part")
