"""Errors the domain functions raise; the API turns them into 4xx answers naming the problem."""

from django.core.exceptions import ValidationError


class DomainError(ValueError):
    """A request that breaks a rule of the domain; `field` names the input at fault."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


class ConflictError(DomainError):
    """A change made on a stale copy: someone else changed the object first."""

    def __init__(self, message: str, current: object = None):
        self.current = current
        super().__init__(message, field=None)


class NotFoundError(DomainError):
    """Nothing of that name among what the caller may see (answered 404, never "forbidden")."""


class ForbiddenError(DomainError):
    """The caller may see the thing but not do this to it now (answered 403)."""


class InUseError(DomainError):
    """The object carries other people's work (answers, gold labels), so it cannot change
    under them (answered 409, naming that work)."""


def check_field(model, field_name: str, value, what: str) -> None:
    """Refuse a value its column cannot take (too long, not a slug), whoever passes it: the API,
    a page's form or a command. `what` names the value in the message."""
    try:
        model._meta.get_field(field_name).clean(value, None)
    except ValidationError as exc:
        raise DomainError(f"{what} {value[:40]!r}: {' '.join(exc.messages)}", field_name) from None
