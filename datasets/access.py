"""Who sees which curation objects: those who oversee the study (a manifest holds every
cell's gold class), registered with `annotator.access` so every API field is scoped by it."""

from __future__ import annotations

from django.db.models import QuerySet

from annotator.access import overseen_studies

from .models import ClassMap, DatasetVersion, Export, Split


def visible_class_maps(user) -> QuerySet[ClassMap]:
    return ClassMap.objects.filter(study__in=overseen_studies(user))


def visible_datasets(user) -> QuerySet[DatasetVersion]:
    return DatasetVersion.objects.filter(study__in=overseen_studies(user))


def visible_splits(user) -> QuerySet[Split]:
    return Split.objects.filter(dataset__study__in=overseen_studies(user))


def visible_exports(user) -> QuerySet[Export]:
    return Export.objects.filter(split__dataset__study__in=overseen_studies(user))


RULES = {
    ClassMap: visible_class_maps,
    DatasetVersion: visible_datasets,
    Split: visible_splits,
    Export: visible_exports,
}
