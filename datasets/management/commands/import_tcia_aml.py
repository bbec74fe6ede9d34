"""manage.py import_tcia_aml ANNOTATIONS_DAT --study NAME [--images DIR]."""

import time

from core.commands import DomainCommand
from datasets.importers import ROUND_NAMES, import_tcia_aml


class Command(DomainCommand):
    help = (
        "Import the public AML cytomorphology annotation file: one patch-only cell per image, "
        "labels in the rounds gold, reannotation-1 and its repeat reannotation-2."
    )
    refusal_note = " (nothing was imported)"

    def add_arguments(self, parser):
        parser.add_argument("annotations", help="annotations.dat of the release.")
        parser.add_argument("--study", required=True, help="Study to create or update.")
        parser.add_argument(
            "--images", help="Folder of the release's TIFF patches (one folder per class)."
        )

    def handle(self, *args, annotations, study, images, **options):
        started = time.perf_counter()
        report = import_tcia_aml(annotations, study, images)
        seconds = time.perf_counter() - started
        self.stdout.write(
            f"study {report.study.name}: {report.lines} lines, {report.cells_created} cells "
            f"created, {report.images_attached} images attached"
        )
        for name in ROUND_NAMES:
            self.stdout.write(
                f"  {name}: {report.labels_created.get(name, 0)} labels created, "
                f"{report.labels_changed.get(name, 0)} changed, "
                f"{report.labels_unchanged.get(name, 0)} unchanged"
            )
        state = "changed" if report.changed_anything else "nothing changed"
        self.stdout.write(f"{state} in {seconds:.1f} s")
