"""Celery tasks of the annotator app: thin wrappers over the domain functions."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from . import patches

log = logging.getLogger(__name__)


def batch_key(scan_id: int) -> str:
    """The cache key held while a batch of the scan's patches is queued and not yet started."""
    return f"patch-batch:{scan_id}"


@shared_task
def cut_patches(scan_id: int) -> int:
    """Cut the missing patches of a scan's labelled cells (idempotent).

    The batch's key is released before the cells are read: a label saved from then on queues
    the next batch, and one saved before is among the cells read here, so none is left out.
    """
    cache.delete(batch_key(scan_id))
    return patches.cut_missing_patches(scan_id)


def schedule_patches(scan_id: int) -> None:
    """Gather the label saves of a few seconds on one scan into one patch-cutting task.

    A failure to reach the broker is logged, not raised: the label is saved already, and a
    missing patch is cut on demand when it is first asked for.
    """
    delay = settings.PATCH_BATCH_DELAY
    if not cache.add(batch_key(scan_id), 1, timeout=max(1, int(delay))):
        return
    try:
        cut_patches.apply_async((scan_id,), countdown=delay)
    except Exception:  # any broker error; see the docstring
        cache.delete(batch_key(scan_id))
        log.warning("Could not queue the patches of scan %s", scan_id, exc_info=True)
