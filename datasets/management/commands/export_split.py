"""manage.py export_split SPLIT --format imagefolder|csv|json --out NAME.zip: write the export here
and now (the same code the background task runs), copy the zip to NAME.zip. Every format is a zip
(manifest.csv and dataset.json inside, see docs/datasets.md), so the name must end in .zip: a zip
named x.csv would be opened as a CSV and read as garbage."""

import shutil

from django.core.files.storage import default_storage
from django.core.management.base import CommandError

from core.commands import DomainCommand
from datasets.exports import request_export, run_export
from datasets.models import Export
from datasets.splits import find_split


class Command(DomainCommand):
    help = "Export a split as a zip (imagefolder, csv or json); prints the export's id and hash."

    def add_arguments(self, parser):
        parser.add_argument("split", help="Split id or hash (prefix of at least 8 characters).")
        parser.add_argument("--format", required=True, choices=Export.Format.values)
        parser.add_argument("--out", required=True, help="Where to copy the zip (NAME.zip).")

    def handle(self, *args, split, format, out, **options):
        if not out.lower().endswith(".zip"):
            raise CommandError(
                f"--out {out!r}: every export format is a zip (manifest.csv and dataset.json "
                f"inside, images too for imagefolder); name it .zip, e.g. --out {format}.zip."
            )
        found = find_split(split)
        export = run_export(request_export(found, format, None).pk)
        if export.status != Export.Status.DONE:
            raise CommandError(f"Export {export.pk} failed: {export.error}")
        with default_storage.open(export.file, "rb") as source, open(out, "wb") as target:
            shutil.copyfileobj(source, target)
        self.stdout.write(
            f"export {export.pk} of split {found.pk} ({format}): {out}, {export.size_bytes} bytes, "
            f"sha256 {export.sha256}"
        )
