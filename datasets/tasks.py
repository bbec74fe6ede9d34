"""Celery tasks of the datasets app (queue `exports`): thin wrappers over the domain functions."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import transaction

from . import exports
from .models import Export

log = logging.getLogger(__name__)


@shared_task
def write_export(export_id: int) -> str:
    """Build and publish one export (idempotent: a finished export is left as it is)."""
    return exports.run_export(export_id).status


def start_export(export: Export) -> None:
    """Queue the export's task once the row is committed; a broker that cannot be reached
    marks the export failed with the reason, rather than leaving it queued for ever."""

    def send() -> None:
        try:
            write_export.delay(export.pk)
        except Exception as exc:  # any broker error: recorded on the row, see the docstring
            log.warning("Could not queue export %s", export.pk, exc_info=True)
            Export.objects.filter(pk=export.pk).update(
                status=Export.Status.FAILED, error=f"Could not queue the export: {exc}"
            )

    transaction.on_commit(send)
