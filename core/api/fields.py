"""Inputs every API reads the same way: ids of related objects, integer query parameters,
filters by query parameter and validated request bodies."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import ValidationError


class IdField(serializers.PrimaryKeyRelatedField):
    """A related object by id; a number too large for any id (JSON's `1e400` reads as an
    infinite float, which DRF passes to the database lookup) is a 400, not a server error."""

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except OverflowError:
            self.fail("incorrect_type", data_type=type(data).__name__)


def int_param(request, name: str, *, required: bool = False) -> int | None:
    """An integer query parameter, or a 400 naming it when it is not one."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        if required:
            raise ValidationError({name: ["This query parameter is required."]})
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({name: [f"Must be an integer, not {raw!r}."]}) from None
    if value < 0:
        raise ValidationError({name: ["Must not be negative."]})
    return value


def filter_by_params(queryset, request, lookups: dict[str, str]):
    """The queryset narrowed by each query parameter given, through its lookup (`study` ->
    `study__name`); a parameter absent or empty narrows nothing."""
    for name, lookup in lookups.items():
        value = request.query_params.get(name)
        if value:
            queryset = queryset.filter(**{lookup: value})
    return queryset


def validated(serializer_class, request, data) -> dict:
    """The data validated by the serializer (a 400 naming each bad field otherwise), whose
    related-object choices are what the requesting user may see (`core.api.scoping`)."""
    form = serializer_class(data=data, context={"request": request})
    form.is_valid(raise_exception=True)
    return form.validated_data
