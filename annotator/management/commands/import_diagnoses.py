"""manage.py import_diagnoses FILE --study NAME."""

from pathlib import Path

from annotator.diagnoses import HEADER, import_diagnoses
from annotator.models import Study
from core.commands import ImportCommand
from core.errors import DomainError


class Command(ImportCommand):
    help = (
        f"Set the confirmed diagnoses of a study's patients from a CSV with the header "
        f"{','.join(HEADER)} (one row per patient; code e.g. AML, ALL, control). Any problem "
        "refuses the whole file, naming its lines."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="CSV file of diagnoses.")
        parser.add_argument("--study", required=True, help="Study whose patients they are.")

    def run_import(self, *, file, study, **options):
        path = Path(file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DomainError(f"Cannot read {path}: {exc.strerror or exc}") from None
        return import_diagnoses(Study.objects.named(study), data, name=path.name)

    def summary(self, result):
        yield f"{result.rows} rows: {result.changed} diagnoses set, {result.unchanged} unchanged"
