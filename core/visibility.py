"""Which rows of each model a user may see: one registry that every app fills for its own models.

Every writable related field of the API draws its choices (the browsable API's select lists)
and what a write may reference from here (core.api.scoping), so a new endpoint is scoped by
construction; a model that has no rule is refused, never shown.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model, QuerySet

VisibilityRule = Callable[[object], QuerySet]
_RULES: dict[type[Model], VisibilityRule] = {}


def register_visibility(rules: dict[type[Model], VisibilityRule]) -> None:
    """Say which rows of each model a user sees (each app, in its AppConfig.ready)."""
    _RULES.update(rules)


def registered_models() -> list[type[Model]]:
    """The models that have a rule (the leak tests walk them)."""
    return list(_RULES)


def visible_objects(model: type[Model], user) -> QuerySet:
    """The rows of `model` that `user` may see or reference."""
    try:
        visible = _RULES[model]
    except KeyError:
        raise ImproperlyConfigured(
            f"No visibility rule for {model.__name__}: register one with "
            "core.visibility.register_visibility before an API field refers to it."
        ) from None
    return visible(user)
