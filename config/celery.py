"""The Celery application; configuration comes from Django settings (CELERY_* names)."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("cytomark")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def recover_orphaned_jobs(**_) -> None:
    """Each worker sweeps for jobs whose worker died, at start and then once per lease."""
    from core.leases import start_sweeper

    start_sweeper()
