"""Celery tasks of the annotator app: thin wrappers over the domain functions."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from core import leases
from core.leases import lease_length

from . import patches, screening
from .models import DetectionJob, PatchBatch

log = logging.getLogger(__name__)


def batch_key(scan_id: int) -> str:
    """The cache key held while a batch of the scan's patches is queued and not yet started."""
    return f"patch-batch:{scan_id}"


@shared_task
def cut_patches(scan_id: int, batch_id: int | None = None) -> int:
    """Cut the missing patches of a scan's labelled cells (idempotent), as the batch row
    `batch_id` (held under a lease) where there is one.

    The batch's key is released before the cells are read: a label saved from then on queues
    the next batch, and one saved before is among the cells read here, so none is left out.
    """
    cache.delete(batch_key(scan_id))
    if batch_id is None:
        return patches.cut_missing_patches(scan_id)
    return patches.run_batch(batch_id)


def queue_batch_again(batch_id: int) -> None:
    """Send a recovered batch's task again (no delay), its lease counting from now."""
    batch = PatchBatch.objects.get(pk=batch_id)
    PatchBatch.objects.filter(pk=batch_id).update(lease_expires_at=timezone.now() + lease_length())
    cut_patches.delay(batch.scan_id, batch.pk)


def schedule_patches(scan_id: int) -> None:
    """Gather the label saves of a few seconds on one scan into one patch-cutting task.

    A failure to reach the broker is logged, not raised: the label is saved already, and a
    missing patch is cut on demand when it is first asked for.
    """
    delay = settings.PATCH_BATCH_DELAY
    if not cache.add(batch_key(scan_id), 1, timeout=max(1, int(delay))):
        return
    # Until its task starts, the batch's lease runs for the delay and one lease length: a
    # batch held by a worker that died before starting it is found and queued again.
    expires = timezone.now() + timedelta(seconds=delay) + lease_length()
    batch = PatchBatch.objects.create(scan_id=scan_id, lease_expires_at=expires)
    try:
        cut_patches.apply_async((scan_id, batch.pk), countdown=delay)
    except Exception:  # any broker error; see the docstring
        batch.delete()
        cache.delete(batch_key(scan_id))
        log.warning("Could not queue the patches of scan %s", scan_id, exc_info=True)


@shared_task
def detect_cells(job_id: int) -> str:
    """Run a queued detection job (annotator.screening); one not queued any more is left."""
    job = screening.run_detection(job_id)
    return job.status if job else "gone"


def queue_detection(job: DetectionJob) -> None:
    """Send the job to its queue once committed (a broker that does not answer fails it)."""
    leases.queue_on_commit(detect_cells, DetectionJob, job.pk, "detection")


def queue_detection_again(job_id: int) -> None:
    """Send a recovered detection's task again."""
    detect_cells.delay(job_id)
