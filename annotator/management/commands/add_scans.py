"""manage.py add_scans PATH... --study NAME [--patient CODE]: register scan files in a study."""

from django.core.management.base import CommandError

from annotator.models import Study
from annotator.scans import ScanError, ingest_scan
from core.commands import DomainCommand


class Command(DomainCommand):
    help = "Register scan files (under SCAN_IMPORT_ROOTS) in a study; known files are recognised."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", help="Scan file(s) on this server.")
        parser.add_argument("--study", required=True, help="Study name.")
        parser.add_argument("--patient", help="Pseudonymous patient code.")
        parser.add_argument("--cohort", default="", help="Cohort of a new patient, e.g. AML.")

    def handle(self, *args, paths, study, patient, cohort, **options):
        study_obj = Study.objects.named(study)
        failures = 0
        for path in paths:
            try:
                result = ingest_scan(path, study=study_obj, patient_code=patient, cohort=cohort)
            except ScanError as exc:
                failures += 1
                self.stderr.write(f"refused: {exc}")
                continue
            scan = result.scan
            state = "added" if result.created else "already registered, linked"
            self.stdout.write(
                f"{state}: scan {scan.pk} {scan.original_name} {scan.width}x{scan.height} "
                f"mpp={scan.mpp_x} sha256={scan.sha256[:12]}"
            )
        if failures:
            raise CommandError(f"{failures} of {len(paths)} file(s) refused.")
