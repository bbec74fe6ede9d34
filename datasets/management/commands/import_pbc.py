"""manage.py import_pbc DIR --study NAME."""

import time

from core.commands import DomainCommand
from datasets.pbc import GOLD_ROUND, import_pbc


class Command(DomainCommand):
    help = (
        "Import the Barcelona peripheral blood cell set (one folder per class of JPG images): "
        "one patch-only cell per image with its gold label in the round 'gold'."
    )
    refusal_note = "\n(nothing was imported)"

    def add_arguments(self, parser):
        parser.add_argument(
            "folder", metavar="DIR", help="Folder holding the release's class folders."
        )
        parser.add_argument("--study", required=True, help="Study to create or update.")

    def handle(self, *args, folder, study, **options):
        started = time.perf_counter()
        report = import_pbc(folder, study)
        seconds = time.perf_counter() - started
        self.stdout.write(
            f"study {report.study.name}: {report.images} images in {len(report.per_class)} "
            f"classes, {report.cells_created} cells created, {report.images_copied} images copied"
        )
        width = max(map(len, report.per_class))
        for folder, counts in sorted(report.per_class.items()):
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            detail = ", ".join(f"{code} {n}" for code, n in ranked)
            self.stdout.write(f"  {folder:<{width}}  {counts.total():>6}  ({detail})")
        self.stdout.write(
            f"  {GOLD_ROUND}: {report.labels_created} labels created, {report.labels_changed} "
            f"changed, {report.labels_unchanged} unchanged"
        )
        state = "changed" if report.changed_anything else "nothing changed"
        self.stdout.write(f"{state} in {seconds:.1f} s")
