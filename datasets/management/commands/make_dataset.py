"""manage.py make_dataset --study NAME --name NAME [--classmap NAME]
[--source gold|ROUND|majority|adjudicated] [--panel NAME] [--adjudication ROUND]
[--keep-cannot-classify] [--scans IDS] [--exclude-patients CODES] [--placed-by hand|detector]
[--notes TEXT]."""

from django.core.management.base import CommandError

from annotator.models import Study
from core.commands import DomainCommand
from datasets.classmaps import find_class_map
from datasets.versions import consensus_line, make_dataset, placement_line


class Command(DomainCommand):
    help = "Freeze a label source under a class map as a new data set version; prints id and hash."

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--classmap", help="Class map NAME or NAME@VERSION (default: none).")
        parser.add_argument(
            "--source",
            default="gold",
            help="gold, a round name, or a panel's consensus: majority or adjudicated.",
        )
        parser.add_argument(
            "--panel", default="", help="The panel of a consensus (default: the latest panel)."
        )
        parser.add_argument(
            "--adjudication",
            default="",
            help="adjudicated: the adjudication round (default: the panel's latest).",
        )
        parser.add_argument("--keep-cannot-classify", action="store_true")
        parser.add_argument("--scans", default="", help="Only these scan ids (comma-separated).")
        parser.add_argument("--exclude-patients", default="", help="Patient codes to leave out.")
        parser.add_argument(
            "--placed-by",
            default="",
            choices=["", "hand", "detector"],
            help="Only the cells placed by hand, or only those the detector proposed and "
            "someone accepted (default: both).",
        )
        parser.add_argument("--notes", default="")

    def handle(self, *args, **options):
        study = Study.objects.named(options["study"])
        try:
            scans = [int(s) for s in options["scans"].split(",") if s.strip()]
        except ValueError:
            raise CommandError("--scans takes scan ids separated by commas.") from None
        filters = {
            "exclude_cannot_classify": not options["keep_cannot_classify"],
            "scans": scans,
            "exclude_patients": [
                p.strip() for p in options["exclude_patients"].split(",") if p.strip()
            ],
            "placed_by": options["placed_by"],
        }
        class_map = find_class_map(study, options["classmap"]) if options["classmap"] else None
        version, created = make_dataset(
            study,
            options["name"],
            None,
            source=options["source"],
            panel=options["panel"],
            adjudication=options["adjudication"],
            class_map=class_map,
            filters=filters,
            notes=options["notes"],
        )
        state = "made" if created else "unchanged, the latest version is"
        self.stdout.write(
            f"data set {version.name} v{version.version} {state}: id {version.pk} "
            f"sha256 {version.sha256} ({len(version.manifest)} cells, "
            f"{len(version.classes)} classes)"
        )
        if version.placement:
            self.stdout.write(placement_line(version))
        if version.is_consensus:
            self.stdout.write(consensus_line(version))
