"""manage.py train_rank RUN OWNER: one process of a data-parallel run; torchrun starts it."""

from django.core.management.base import BaseCommand, CommandError

from mltasks import runs


class Command(BaseCommand):
    help = (
        "One rank of a data-parallel training run, started by torchrun from the training "
        "worker (or by join_training on another host); not for use by hand."
    )

    def add_arguments(self, parser):
        parser.add_argument("run", type=int, help="The run's id.")
        parser.add_argument("owner", help="The lease owner of the supervising worker.")

    def handle(self, *args, **options):
        if not runs.train_rank(options["run"], options["owner"]):
            raise CommandError(f"Rank failed or training run {options['run']} failed.")
