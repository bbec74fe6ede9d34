"""manage.py check_detection --study NAME [--scan ID ...] [--format text|json]: the detector's
recall against the examiners' clicks and its precision from their review, per scan."""

import json

from django.core.management.base import CommandError

from annotator.detection_check import study_check
from annotator.differential import share_text
from annotator.models import Study
from core.commands import DomainCommand


def _figure(row: dict) -> str:
    return share_text(row, percent=False, empty="- (nothing to measure)")


class Command(DomainCommand):
    help = "Measure the detector on a study's scans with its examiners' clicks and reviews."

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True)
        parser.add_argument("--scan", type=int, action="append", default=[], help="repeatable")
        parser.add_argument("--format", choices=["text", "json"], default="text")

    def handle(self, *args, study, scan, format, **options):
        found = Study.objects.filter(name=study).first()
        if found is None:
            raise CommandError(f"No study named {study!r}.")
        report = study_check(found, scan or None)
        if format == "json":
            self.stdout.write(json.dumps(report, indent=2))
            return
        for row in report["scans"]:
            recall, precision = row["recall"], row["precision"]
            self.stdout.write(
                f"{row['name']} (scan {row['scan']}): {row['proposed']} proposed; recall "
                f"{recall['matched']} of {row['clicked']} clicks = {_figure(recall)}; "
                f"precision {precision['count']} of {precision['decided']} "
                f"decided = {_figure(precision)}"
            )
        recall, precision = _figure(report["recall"]), _figure(report["precision"])
        self.stdout.write(f"All scans: recall {recall}, precision {precision}")
