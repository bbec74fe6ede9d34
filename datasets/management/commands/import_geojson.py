"""manage.py import_geojson FILE --study NAME --scan ID --user USERNAME."""

import json

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.db import transaction

from annotator.annotation import gold_round_for_member
from annotator.models import Study
from core.commands import DomainCommand
from datasets.geojson import GeoJsonProblems, import_cells_geojson


class Command(DomainCommand):
    help = (
        "Import QuPath GeoJSON points as cells of a scan, labelled by their classes in the "
        "user's gold round."
    )
    refusal_note = " (nothing was imported)"

    def add_arguments(self, parser):
        parser.add_argument("file", help="GeoJSON exported from QuPath.")
        parser.add_argument("--study", required=True, help="Study name.")
        parser.add_argument("--scan", required=True, type=int, help="Scan id.")
        parser.add_argument("--user", required=True, help="Annotator whose gold round it is.")

    def handle(self, *args, file, study, scan, user, **options):
        try:
            with open(file, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandError(f"Cannot read {file} as JSON: {exc}") from None
        found_study = Study.objects.named(study)
        found_scan = found_study.scans.filter(pk=scan).first()
        if found_scan is None:
            raise CommandError(f"Scan {scan} is not part of study {study}.")
        rater = get_user_model().objects.filter(username=user).first()
        if rater is None:
            raise CommandError(f"No user named {user!r}.")
        try:
            with transaction.atomic():  # a refused import leaves no new gold round behind
                round_ = gold_round_for_member(found_study, rater)
                summary = import_cells_geojson(found_study, found_scan, round_, data, rater)
        except GeoJsonProblems as exc:
            listing = "\n".join(f"  - {problem}" for problem in exc.problems)
            raise CommandError(
                f"{len(exc.problems)} problem(s) in {file}:\n{listing}\n(nothing was imported)"
            ) from None
        self.stdout.write(
            f"{summary.features} features: {summary.cells_created} cells created, "
            f"{summary.cells_reused} already there; in round {round_}: "
            f"{summary.labels_created} labels created, {summary.labels_changed} changed, "
            f"{summary.labels_unchanged} unchanged, {summary.without_class} points without class"
        )
