"""manage.py import_pbc DIR --study NAME."""

from core.commands import ImportCommand
from datasets.pbc import GOLD_ROUND, import_pbc


class Command(ImportCommand):
    help = (
        "Import the Barcelona peripheral blood cell set (one folder per class of JPG images): "
        "one patch-only cell per image with its gold label in the round 'gold'."
    )
    refusal_note = "\n(nothing was imported)"

    def add_arguments(self, parser):
        parser.add_argument(
            "folder", metavar="DIR", help="Folder holding the release's class folders."
        )
        super().add_arguments(parser)

    def run_import(self, *, folder, study, **options):
        return import_pbc(folder, study)

    def summary(self, report):
        yield (
            f"study {report.study.name}: {report.images} images in {len(report.per_class)} "
            f"classes, {report.cells_created} cells created, {report.images_copied} images copied"
        )
        width = max(map(len, report.per_class))
        for folder, counts in sorted(report.per_class.items()):
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            detail = ", ".join(f"{code} {n}" for code, n in ranked)
            yield f"  {folder:<{width}}  {counts.total():>6}  ({detail})"
        yield (
            f"  {GOLD_ROUND}: {report.labels_created} labels created, {report.labels_changed} "
            f"changed, {report.labels_unchanged} unchanged"
        )
