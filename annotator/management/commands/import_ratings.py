"""manage.py import_ratings FILE --study NAME [--taxonomy NAME] [--panel NAME]."""

import time
from pathlib import Path

from annotator.rating_import import DEFAULT_PANEL, HEADER, import_ratings
from core.commands import DomainCommand


class Command(DomainCommand):
    help = (
        f"Import a panel's ratings from a CSV with the header {','.join(HEADER)} (one row per "
        "rating; label a leaf code, UNC for cannot classify, empty for not rated) as a panel "
        "of blinded rounds, one per rater."
    )
    refusal_note = " (nothing was imported)"

    def add_arguments(self, parser):
        parser.add_argument("file", help="CSV file of ratings.")
        parser.add_argument("--study", required=True, help="Study to create or update.")
        parser.add_argument(
            "--taxonomy",
            help="Taxonomy of a new study, by name (its latest version; default aml-18); "
            "an existing study must use it.",
        )
        parser.add_argument("--panel", default=DEFAULT_PANEL, help="Panel to create or update.")

    def handle(self, *args, file, study, taxonomy, panel, **options):
        started = time.perf_counter()
        result = import_ratings(Path(file), study, taxonomy=taxonomy, panel=panel)
        seconds = time.perf_counter() - started
        made = "created" if result.study_created else "updated"
        self.stdout.write(
            f"study {result.study.name} ({made}, taxonomy {result.study.taxonomy}), panel "
            f"{result.panel.name}: {result.ratings} ratings of {result.items} items by "
            f"{result.raters} raters"
        )
        self.stdout.write(
            f"  {result.cells_created} cells, {result.raters_created} raters, "
            f"{result.rounds_created} rounds created; {result.queued} items queued"
        )
        self.stdout.write(
            f"  labels: {result.created} created, {result.changed} changed, "
            f"{result.unchanged} unchanged; {result.unrated} not rated; "
            f"{result.not_in_file} stored labels not in the file (kept)"
        )
        state = "changed" if result.changed_anything else "nothing changed"
        self.stdout.write(f"{state} in {seconds:.1f} s")
