"""manage.py detect_cells --scan ID [--out FILE.json] [--rerun]."""

import json
import time
from pathlib import Path

from django.core.management.base import CommandError

from annotator import screening
from annotator.models import DetectionJob, ProposedCell, Scan
from core.commands import DomainCommand
from core.errors import DomainError


class Command(DomainCommand):
    help = (
        "Find the leukocytes of a scan with the detector, here in this process, and store them "
        "as proposed cells; --out writes the scan's proposals as JSON ({x, y, confidence})."
    )

    def add_arguments(self, parser):
        parser.add_argument("--scan", type=int, required=True, help="The scan's id.")
        parser.add_argument("--out", help="A JSON file for the proposals.")
        parser.add_argument(
            "--rerun",
            action="store_true",
            help="Detect again although this detector version is done on the scan.",
        )

    def handle(self, *args, **options):
        scan = Scan.objects.filter(pk=options["scan"]).first()
        if scan is None:
            raise DomainError(f"No scan {options['scan']}.")
        job, created = screening.start_detection(scan, None, rerun=options["rerun"])
        started = time.monotonic()
        if created:
            job = screening.run_detection(job.pk)
        elif job.status == DetectionJob.Status.DONE:
            self.stdout.write(
                f"scan {scan.pk} was detected by job {job.pk} ({job.detector_version}); "
                "nothing detected again (--rerun to do so)"
            )
        else:
            raise CommandError(f"detection {job.pk} of scan {scan.pk} is {job.status} already")
        if job.status != DetectionJob.Status.DONE:
            raise CommandError(f"detection {job.pk} {job.status}: {job.error}")
        proposed = ProposedCell.objects.filter(
            scan=scan,
            detector_version=job.detector_version,
            status=ProposedCell.Status.PROPOSED,
        ).order_by("y", "x")
        rows = [
            {"x": x, "y": y, "confidence": round(confidence, 4)}
            for x, y, confidence in proposed.values_list("x", "y", "confidence")
        ]
        if created:
            self.stdout.write(
                f"detection {job.pk} of scan {scan.pk} done in {time.monotonic() - started:.1f} s "
                f"({job.detector_version}): {job.found_count} found, {job.new_count} new"
            )
        self.stdout.write(f"{len(rows)} proposed cells on scan {scan.pk}")
        if options["out"]:
            Path(options["out"]).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
            self.stdout.write(f"written to {options['out']}")
