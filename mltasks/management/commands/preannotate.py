"""manage.py preannotate --run ID: suggest classes for the study's unlabelled cells."""

from django.core.management.base import CommandError

from core.commands import DomainCommand
from mltasks.inference import preannotate
from mltasks.models import TrainingRun


class Command(DomainCommand):
    help = "Apply a finished run's models to the cells no gold round labelled yet."

    def add_arguments(self, parser):
        parser.add_argument("--run", type=int, required=True)

    def handle(self, *args, run, **options):
        found = TrainingRun.objects.filter(pk=run).first()
        if found is None:
            raise CommandError(f"No training run {run}.")
        count = preannotate(found, None)
        self.stdout.write(f"{count} cell(s) of {found.split.dataset.study.name} have a suggestion")
