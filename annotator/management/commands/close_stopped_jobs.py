"""manage.py close_stopped_jobs PID: end the jobs of a worker that `make run` had to kill."""

from django.core.management.base import BaseCommand

from core import leases


class Command(BaseCommand):
    help = (
        "End the running jobs of a killed worker process of this host (cancelled with the "
        "reason, or queued again) without waiting for their leases to run out."
    )

    def add_arguments(self, parser):
        parser.add_argument("pid", type=int, help="The process id of the killed worker.")
        parser.add_argument("--reason", default="Cytomark was shut down")

    def handle(self, *args, pid, reason, **options):
        for label, pk, state in leases.end_jobs_of_process(pid, reason):
            self.stdout.write(f"The {label} {pk} is now {state}.")
