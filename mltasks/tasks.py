"""Celery tasks of mltasks (queue `training`): thin wrappers over the domain functions."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction

from core import leases

from . import runs
from .models import ScanClassification, TrainingRun

log = logging.getLogger(__name__)


@shared_task
def train(run_id: int) -> str:
    """Train a queued run (a run that is not queued any more is left as it is)."""
    return runs.execute(run_id).status


@shared_task
def train_fold(job_id: int) -> str:
    """Train one fold of a fanned-out run (mltasks.fanout); the last fold gathers the report."""
    from . import fanout

    return fanout.run_fold_job(job_id)


@shared_task
def preannotate(run_id: int) -> int:
    """Suggest classes for the study's unlabelled cells with a finished run's models."""
    from .inference import preannotate as suggest

    return suggest(TrainingRun.objects.get(pk=run_id), None)


@shared_task
def classify_scan(job_id: int) -> str:
    """Count a scan with a finished run's models (mltasks.smear_classification)."""
    from .smear_classification import run_classification

    job = run_classification(job_id)
    return job.status if job else "gone"


def queue_classification(job: ScanClassification) -> None:
    """Send the classification to the `training` queue once committed."""
    leases.queue_on_commit(classify_scan, ScanClassification, job.pk, "classification")


def queue_run(run: TrainingRun) -> None:
    """Send the run to the `training` queue once committed; an unreachable broker fails the run
    with the reason instead of leaving it queued for ever."""

    def send() -> None:
        try:
            train.delay(run.pk)
        except Exception:  # any broker error: recorded on the run, in full in the log
            log.warning("Could not queue training run %s", run.pk, exc_info=True)
            TrainingRun.objects.filter(pk=run.pk).update(
                status=TrainingRun.Status.FAILED,
                error="Could not queue the run: the task broker did not answer. Start it again "
                "once the broker is back; the details are in the web server's log.",
            )

    transaction.on_commit(send)
