"""The Celery application; configuration comes from Django settings (CELERY_* names)."""

import logging
import os
import sys

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("cytomark")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def recover_orphaned_jobs(**_) -> None:
    """Each worker sweeps for jobs whose worker died, at start and then once per lease."""
    from core.leases import start_sweeper

    start_sweeper()


@worker_shutting_down.connect
def stop_running_jobs(sig: str = "", **_) -> None:
    """A warm shutdown stops the running job at its next step instead of waiting for its end
    (a training run can take hours); the job records why. SIGINT is a Ctrl-C in `make run`'s
    terminal, SIGTERM a stop by the script or the service manager."""
    from core.leases import stop_jobs

    stop_jobs("Cytomark was shut down (Ctrl-C)" if sig == "SIGINT" else "its worker was shut down")


@worker_shutdown.connect
def exit_at_once(sender=None, **_) -> None:
    """The worker has stopped (its jobs ended, its messages acknowledged): leave without the
    interpreter's teardown, which with the numerical libraries loaded takes seconds more. Only
    a worker process of its own (`celery worker`), never one embedded in another program."""
    from celery.apps.worker import Worker

    if not isinstance(sender, Worker):
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(getattr(sender, "exitcode", None) or 0)
