"""The OpenAPI schema describes the answers as they are: drf-spectacular takes a declared
field's nullability from the field alone, so a read-only `rater.username` or a declared
`IntegerField` over a nullable column reads as never null. This extension marks, in answers
only, every field of a model serializer whose source passes through a nullable column, and
leaves out of `required` the fields a serializer names in `schema_optional_fields` (fields it
shows to some readers only). Requests keep the fields' own rules.

Imported by an app's `ready()` so that it is registered before any schema is generated.
"""

from __future__ import annotations

from django.core.exceptions import FieldDoesNotExist
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.plumbing import force_instance
from rest_framework import serializers


def source_may_be_null(model, field: serializers.Field) -> bool:
    """True when the field's source crosses a nullable column of `model` (or of a relation)."""
    if isinstance(field, serializers.SerializerMethodField) or field.source in ("*", None):
        return False
    for part in field.source.split("."):
        try:
            column = model._meta.get_field(part)
        except FieldDoesNotExist:
            return False
        if column.null:
            return True
        if not column.is_relation:
            return False
        model = column.related_model
    return False


def _nullable(schema: dict) -> dict:
    if "$ref" in schema:
        return {"allOf": [{"$ref": schema["$ref"]}], "nullable": True}
    return {**schema, "nullable": True}


class AnswersAsServed(OpenApiSerializerExtension):
    target_class = "rest_framework.serializers.ModelSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        if direction != "response":
            return schema
        serializer = force_instance(self.target)
        model = serializer.Meta.model
        properties = schema.get("properties", {})
        for name, field in serializer.fields.items():
            if name in properties and source_may_be_null(model, field):
                properties[name] = _nullable(properties[name])
        optional = set(getattr(serializer, "schema_optional_fields", ()))
        if optional and "required" in schema:
            schema["required"] = [name for name in schema["required"] if name not in optional]
        return schema
