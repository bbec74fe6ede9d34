"""manage.py import_tcia_aml ANNOTATIONS_DAT --study NAME [--images DIR]."""

from core.commands import ImportCommand
from datasets.importers import ROUND_NAMES, import_tcia_aml


class Command(ImportCommand):
    help = (
        "Import the public AML cytomorphology annotation file: one patch-only cell per image, "
        "labels in the rounds gold, reannotation-1 and its repeat reannotation-2."
    )

    def add_arguments(self, parser):
        parser.add_argument("annotations", help="annotations.dat of the release.")
        super().add_arguments(parser)
        parser.add_argument(
            "--images", help="Folder of the release's TIFF patches (one folder per class)."
        )

    def run_import(self, *, annotations, study, images, **options):
        return import_tcia_aml(annotations, study, images)

    def summary(self, report):
        yield (
            f"study {report.study.name}: {report.lines} lines, {report.cells_created} cells "
            f"created, {report.images_attached} images attached"
        )
        for name in ROUND_NAMES:
            yield (
                f"  {name}: {report.labels_created.get(name, 0)} labels created, "
                f"{report.labels_changed.get(name, 0)} changed, "
                f"{report.labels_unchanged.get(name, 0)} unchanged"
            )
