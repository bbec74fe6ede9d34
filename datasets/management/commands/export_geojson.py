"""manage.py export_geojson --study NAME --scan ID [--round NAME] --out FILE."""

import json

from django.core.management.base import CommandError

from annotator.models import Round, Study
from core.commands import DomainCommand
from datasets.geojson import default_export_round, scan_cells_geojson


class Command(DomainCommand):
    help = (
        "Write one scan's cells as QuPath GeoJSON points, classified by their labels in a round "
        "(default: the gold round with the most labels on the scan)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True, help="Study name.")
        parser.add_argument("--scan", required=True, type=int, help="Scan id.")
        parser.add_argument("--round", dest="round_name", help="Round name.")
        parser.add_argument("--out", required=True, help="GeoJSON file to write.")

    def handle(self, *args, study, scan, round_name, out, **options):
        found_study = Study.objects.named(study)
        found_scan = found_study.scans.filter(pk=scan).first()
        if found_scan is None:
            raise CommandError(f"Scan {scan} is not part of study {study}.")
        if round_name is None:
            round_ = default_export_round(found_study, found_scan)
            if round_ is None:
                raise CommandError(
                    f"No gold round of study {study} has labels on scan {scan}; name one with "
                    "--round."
                )
        else:
            round_ = Round.objects.filter(study=found_study, name=round_name).first()
            if round_ is None:
                raise CommandError(f"No round {round_name!r} in study {study}.")
        collection = scan_cells_geojson(found_study, found_scan, round_)
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(collection, handle, indent=2)
            handle.write("\n")
        features = collection["features"]
        classified = sum("classification" in f["properties"] for f in features)
        self.stdout.write(
            f"{len(features)} cells of scan {scan} ({classified} classified in round "
            f"{round_}) written to {out}"
        )
