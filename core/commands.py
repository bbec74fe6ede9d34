"""What every app's management commands share: the domain's refusals as the command's error."""

from __future__ import annotations

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
