"""What every app's management commands share: the domain's refusals as the command's error,
and the frame of an import into a study (timed, summarised, told whether it changed anything)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from django.core.management.base import BaseCommand, CommandError

from core.errors import DomainError


class DomainCommand(BaseCommand):
    """A command over the domain functions the API uses: a DomainError they raise (a study of
    no such name, a parameter out of bounds) stops the command with its message, as
    CommandError (exit status 1, no traceback), the way the API answers it with a 4xx.

    `refusal_note` is added to the message, e.g. " (nothing was imported)".
    """

    refusal_note = ""

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except DomainError as exc:
            raise CommandError(f"{exc}{self.refusal_note}") from None


class ImportCommand(DomainCommand):
    """An import into a study, created or updated (`--study`): `run_import` gets the command's
    options and returns a report with `changed_anything`; the command writes the report's
    `summary` lines, then whether anything changed and how long the import took, so that a
    second run over the same input says "nothing changed".

    A subclass adding a positional argument adds it before calling `add_arguments` here.
    """

    refusal_note = " (nothing was imported)"

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True, help="Study to create or update.")

    def run_import(self, **options):
        raise NotImplementedError

    def summary(self, report) -> Iterator[str]:
        raise NotImplementedError

    def handle(self, *args, **options):
        started = time.perf_counter()
        report = self.run_import(**options)
        seconds = time.perf_counter() - started
        for line in self.summary(report):
            self.stdout.write(line)
        state = "changed" if report.changed_anything else "nothing changed"
        self.stdout.write(f"{state} in {seconds:.1f} s")
