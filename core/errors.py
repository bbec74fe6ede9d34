"""Errors the domain functions raise; the API turns them into 4xx answers naming the problem.

Each error knows its HTTP status and the body that names the problem, so the API's exception
handler (core.api.errors) maps every app's errors without knowing any app.
"""

from collections.abc import Callable

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction


class DomainError(ValueError):
    """A request that breaks a rule of the domain; `field` names the input at fault."""

    status_code = 400

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)

    def body(self) -> dict:
        return {self.field: [str(self)]} if self.field else {"detail": str(self)}


class ConflictError(DomainError):
    """A change made on a stale copy: someone else changed the object first. `current` is the
    stored state the client should reload, as the API serves it (a plain dict), or None."""

    status_code = 409

    def __init__(self, message: str, current: dict | None = None):
        self.current = current
        super().__init__(message, field=None)

    def body(self) -> dict:
        return {"detail": str(self), "current": self.current}


class NotFoundError(DomainError):
    """Nothing of that name among what the caller may see (answered 404, never "forbidden")."""

    status_code = 404

    def body(self) -> dict:
        return {"detail": str(self)}


class ForbiddenError(DomainError):
    """The caller may see the thing but not do this to it now (answered 403)."""

    status_code = 403

    def body(self) -> dict:
        return {"detail": str(self)}


class InUseError(DomainError):
    """The object carries other people's work (answers, gold labels), so it cannot change
    under them (answered 409, naming that work)."""

    status_code = 409

    def body(self) -> dict:
        return {"detail": str(self)}


def check_field(model, field_name: str, value, what: str) -> None:
    """Refuse a value its column cannot take (too long, not a slug), whoever passes it: the API,
    a page's form or a command. `what` names the value in the message."""
    try:
        model._meta.get_field(field_name).clean(value, None)
    except ValidationError as exc:
        raise DomainError(f"{what} {value[:40]!r}: {' '.join(exc.messages)}", field_name) from None


def create_or_refuse(manager, refusal: Callable[[], DomainError], /, **fields):
    """`manager.create(**fields)` in a savepoint; when another request made the same unique
    row a moment ago (IntegrityError), raise `refusal()` instead of a server error. It is
    called only then, after the rollback, so it may read what the other request stored."""
    try:
        with transaction.atomic():
            return manager.create(**fields)
    except IntegrityError:
        raise refusal() from None
