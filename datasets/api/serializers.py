"""Shapes of the datasets API: they validate input and never change data."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from annotator.access import overseen_studies
from annotator.models import Study
from core.api.fields import IdField
from core.api.scoping import ScopedModelSerializer, ScopedSerializer
from core.params import SEED_MAX

from ..classmaps import DEFAULT_THRESHOLD, MAX_THRESHOLD
from ..models import ClassMap, DatasetVersion, Export, Split
from ..splits import K_RANGE, describe


def _optional_text(max_length: int | None = None, help_text: str | None = None):
    """A text field a request may leave out or blank; either reads as "", which the domain
    function takes as its default (the study's latest panel, no notes)."""
    return serializers.CharField(
        max_length=max_length, required=False, allow_blank=True, default="", help_text=help_text
    )


class CodesField(serializers.ListField):
    """Node codes as a JSON list or one comma-separated string."""

    child = serializers.CharField(max_length=16)

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = [data]
        if isinstance(data, list) and all(isinstance(item, str) for item in data):
            data = [code.strip() for item in data for code in item.split(",") if code.strip()]
        return super().to_internal_value(data)


class ProposalQuerySerializer(ScopedSerializer):
    visible_querysets = {"study": overseen_studies}

    study = serializers.SlugRelatedField(slug_field="name", queryset=Study.objects.all())
    threshold = serializers.IntegerField(
        default=DEFAULT_THRESHOLD, help_text=f"Cells, 0 to {MAX_THRESHOLD}."
    )
    collapse = CodesField(required=False, default=list)
    expand = CodesField(required=False, default=list)


class ClassMapCreateSerializer(ProposalQuerySerializer):
    name = serializers.SlugField(max_length=100)
    notes = _optional_text()


class ClassMapSerializer(ScopedModelSerializer):
    study = serializers.SlugRelatedField(slug_field="name", read_only=True)
    taxonomy = serializers.StringRelatedField()
    created_by = serializers.StringRelatedField()

    class Meta:
        model = ClassMap
        fields = [
            "id",
            "study",
            "taxonomy",
            "name",
            "version",
            "collapsed",
            "classes",
            "threshold",
            "notes",
            "created_by",
            "created_at",
        ]


class DatasetCreateSerializer(ScopedSerializer):
    visible_querysets = {"study": overseen_studies}

    study = serializers.SlugRelatedField(slug_field="name", queryset=Study.objects.all())
    name = serializers.SlugField(max_length=100)
    classmap = _optional_text(help_text="NAME or NAME@VERSION.")
    source = serializers.CharField(
        max_length=200,
        default="gold",
        help_text="gold, a round's name, or a panel's consensus: majority or adjudicated.",
    )
    panel = _optional_text(
        100, "majority / adjudicated: the panel's name (default: the study's latest panel)."
    )
    adjudication = _optional_text(
        200, "adjudicated: the adjudication round's name (default: the panel's latest)."
    )
    exclude_cannot_classify = serializers.BooleanField(default=True)
    scans = serializers.ListField(child=serializers.IntegerField(min_value=1), default=list)
    exclude_patients = serializers.ListField(
        child=serializers.CharField(max_length=64), default=list
    )
    placed_by = serializers.ChoiceField(
        choices=["hand", "detector"],
        required=False,
        help_text="Only the cells placed by hand, or only those the detector proposed and "
        "someone accepted (default: both).",
    )
    notes = _optional_text()


class DatasetSerializer(ScopedModelSerializer):
    study = serializers.SlugRelatedField(slug_field="name", read_only=True)
    panel = serializers.SlugRelatedField(slug_field="name", read_only=True)
    class_map = serializers.StringRelatedField()
    created_by = serializers.StringRelatedField()
    cells = serializers.SerializerMethodField()

    class Meta:
        model = DatasetVersion
        fields = [
            "id",
            "study",
            "name",
            "version",
            "source",
            "label_source",
            "panel",
            "consensus",
            "class_map",
            "filters",
            "classes",
            "counts",
            "cells",
            "placement",
            "sha256",
            "notes",
            "created_by",
            "created_at",
        ]

    def get_cells(self, dataset) -> int:
        return len(dataset.manifest)


class DatasetDetailSerializer(DatasetSerializer):
    class Meta(DatasetSerializer.Meta):
        fields = [*DatasetSerializer.Meta.fields, "manifest", "detector_cells"]


class SplitCreateSerializer(ScopedSerializer):
    dataset = IdField(queryset=DatasetVersion.objects.all())
    strategy = serializers.ChoiceField(choices=Split.Strategy.values)
    # The bounds are checked by the domain (datasets.splits.SplitParameters), as for the page
    # and the make_split command.
    k = serializers.IntegerField(default=5, help_text=f"Folds, {K_RANGE[0]} to {K_RANGE[1]}.")
    seed = serializers.IntegerField(default=0, help_text=f"0 to {SEED_MAX}.")
    fractions = serializers.DictField(
        child=serializers.FloatField(),
        required=False,
        help_text="holdout: train, validation and test, each from 0 to 1, adding up to 1.",
    )
    grouped = serializers.BooleanField(default=False)


class SplitSerializer(ScopedModelSerializer):
    dataset_name = serializers.CharField(source="dataset.name", read_only=True)
    dataset_version = serializers.IntegerField(source="dataset.version", read_only=True)
    strategy_display = serializers.SerializerMethodField(
        help_text='The strategy, its parameters and seed in words: "patient-wise, 3 folds, seed 7".'
    )

    def get_strategy_display(self, split: Split) -> str:
        return describe(split.strategy, split.params, split.seed)

    class Meta:
        model = Split
        fields = [
            "id",
            "dataset",
            "dataset_name",
            "dataset_version",
            "strategy",
            "strategy_display",
            "params",
            "seed",
            "fold_counts",
            "warnings",
            "patient_check",
            "sha256",
            "created_at",
        ]


class ExportCreateSerializer(ScopedSerializer):
    split = IdField(queryset=Split.objects.all())
    format = serializers.ChoiceField(choices=Export.Format.values)


class ExportSerializer(ScopedModelSerializer):
    download = serializers.SerializerMethodField()

    class Meta:
        model = Export
        fields = [
            "id",
            "split",
            "format",
            "status",
            "done",
            "total",
            "size_bytes",
            "sha256",
            "error",
            "download",
            "created_at",
            "finished_at",
        ]

    def get_download(self, export) -> str | None:
        if export.status != Export.Status.DONE:
            return None
        return reverse("export-download", args=[export.pk])
