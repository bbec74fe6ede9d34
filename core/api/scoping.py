"""Related-object choices scoped to the requesting user, for every serializer of the API.

DRF gives a writable related field the whole table as its queryset. That queryset is both
what a write may reference and what the browsable API lists in its forms' select boxes, so an
unscoped field shows every cell, round or split of the database to anyone who asks for HTML.
Here every writable related field takes its queryset from `core.visibility.visible_objects`
for the requesting user (no request or an anonymous one: nothing), unless the serializer names
a narrower one.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from rest_framework import serializers
from rest_framework.relations import ManyRelatedField, RelatedField

from core.visibility import visible_objects


class ScopedRelationsMixin:
    """Limit every writable related field to what the requesting user may see.

    `visible_querysets` maps a field name to a function of the user giving a narrower choice
    (e.g. only the user's own rounds); every other related field uses the model's rule.
    """

    visible_querysets: dict = {}

    def get_fields(self):
        fields = super().get_fields()
        request = self.context.get("request")
        user = getattr(request, "user", None) or AnonymousUser()
        for name, field in fields.items():
            relation = field.child_relation if isinstance(field, ManyRelatedField) else field
            if not isinstance(relation, RelatedField) or relation.queryset is None:
                continue
            model = relation.queryset.model
            narrower = self.visible_querysets.get(name)
            if not user.is_authenticated:
                relation.queryset = model._default_manager.none()
            elif narrower:
                relation.queryset = narrower(user)
            else:
                relation.queryset = visible_objects(model, user)
        return fields


class ScopedSerializer(ScopedRelationsMixin, serializers.Serializer):
    """The base of every plain serializer of the API."""


class ScopedModelSerializer(ScopedRelationsMixin, serializers.ModelSerializer):
    """The base of every model serializer of the API."""
