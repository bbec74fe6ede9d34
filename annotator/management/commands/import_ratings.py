"""manage.py import_ratings FILE --study NAME [--taxonomy NAME] [--panel NAME]."""

from pathlib import Path

from annotator.rating_import import DEFAULT_PANEL, HEADER, import_ratings
from core.commands import ImportCommand


class Command(ImportCommand):
    help = (
        f"Import a panel's ratings from a CSV with the header {','.join(HEADER)} (one row per "
        "rating; label a leaf code, UNC for cannot classify, empty for not rated) as a panel "
        "of blinded rounds, one per rater."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="CSV file of ratings.")
        super().add_arguments(parser)
        parser.add_argument(
            "--taxonomy",
            help="Taxonomy of a new study, by name (its latest version; default aml-18); "
            "an existing study must use it.",
        )
        parser.add_argument("--panel", default=DEFAULT_PANEL, help="Panel to create or update.")

    def run_import(self, *, file, study, taxonomy, panel, **options):
        return import_ratings(Path(file), study, taxonomy=taxonomy, panel=panel)

    def summary(self, result):
        made = "created" if result.study_created else "updated"
        yield (
            f"study {result.study.name} ({made}, taxonomy {result.study.taxonomy}), panel "
            f"{result.panel.name}: {result.ratings} ratings of {result.items} items by "
            f"{result.raters} raters"
        )
        yield (
            f"  {result.cells_created} cells, {result.raters_created} raters, "
            f"{result.rounds_created} rounds created; {result.queued} items queued"
        )
        yield (
            f"  labels: {result.created} created, {result.changed} changed, "
            f"{result.unchanged} unchanged; {result.unrated} not rated; "
            f"{result.not_in_file} stored labels not in the file (kept)"
        )
