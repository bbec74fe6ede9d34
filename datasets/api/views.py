"""API of dataset curation: class maps, frozen versions, splits and exports.

Everything here is open to those who oversee a study (coordinators, data scientists, admins):
a data set's manifest holds every cell's gold class. Versions, maps and splits are immutable:
there is no PUT, PATCH or DELETE; a change is a new version.
"""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.db import transaction
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from core.api.fields import filter_by_params, int_param, validated

from .. import classmaps, exports, splits, versions
from ..access import visible_class_maps, visible_datasets, visible_exports, visible_splits
from ..models import Export
from ..tasks import start_export
from . import serializers as s

STUDY_PARAMETER = OpenApiParameter("study", str, description="Only this study (its name).")


@extend_schema_view(
    list=extend_schema(summary="List class maps"),
    create=extend_schema(summary="Save a class map version"),
    retrieve=extend_schema(summary="Get a class map"),
    propose=extend_schema(summary="Propose a class map from the label counts"),
)
class ClassMapViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Saved class maps (each version frozen); `propose/` shows counts and the proposed merge;
    POST saves a proposal (adjusted by `collapse` / `expand`) as the next version of `name`."""

    serializer_class = s.ClassMapSerializer

    def get_queryset(self):
        maps = visible_class_maps(self.request.user)
        maps = maps.select_related("study", "taxonomy", "created_by")
        return filter_by_params(maps, self.request, {"study": "study__name"})

    @extend_schema(parameters=[STUDY_PARAMETER])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(parameters=[STUDY_PARAMETER], responses={200: OpenApiTypes.OBJECT})
    @action(detail=False)
    def propose(self, request):
        """Counts per node, the collapsed nodes and the resulting classes (nothing is saved)."""
        data = validated(
            s.ProposalQuerySerializer,
            request,
            request.query_params,
        )
        proposal = classmaps.propose(
            data["study"],
            threshold=data["threshold"],
            collapse=data["collapse"],
            expand=data["expand"],
        )
        return Response(proposal.to_dict())

    @extend_schema(request=s.ClassMapCreateSerializer, responses={201: s.ClassMapSerializer})
    def create(self, request):
        data = validated(s.ClassMapCreateSerializer, request, request.data)
        proposal = classmaps.propose(
            data["study"],
            threshold=data["threshold"],
            collapse=data["collapse"],
            expand=data["expand"],
        )
        made, created = classmaps.save_class_map(
            data["study"], data["name"], proposal, request.user, data["notes"]
        )
        return Response(
            s.ClassMapSerializer(made).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


@extend_schema_view(
    list=extend_schema(summary="List data set versions"),
    create=extend_schema(summary="Make a data set version"),
    retrieve=extend_schema(summary="Get a data set version"),
    diff=extend_schema(summary="Compare two data set versions"),
)
class DatasetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Frozen data set versions. POST makes the next version of `name` (or answers 200 with
    the latest one when nothing changed); versions are never changed or deleted."""

    def get_queryset(self):
        found = visible_datasets(self.request.user)
        found = found.select_related("study", "class_map", "panel", "created_by").order_by("-id")
        if self.action == "list":
            found = found.defer("manifest", "detector_cells")
        return filter_by_params(found, self.request, {"study": "study__name"})

    def get_serializer_class(self):
        return s.DatasetDetailSerializer if self.action == "retrieve" else s.DatasetSerializer

    @extend_schema(parameters=[STUDY_PARAMETER])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=s.DatasetCreateSerializer, responses={201: s.DatasetSerializer})
    def create(self, request):
        data = validated(s.DatasetCreateSerializer, request, request.data)
        study = data["study"]
        class_map = classmaps.find_class_map(study, data["classmap"]) if data["classmap"] else None
        made, created = versions.make_dataset(
            study,
            data["name"],
            request.user,
            source=data["source"],
            panel=data["panel"],
            adjudication=data["adjudication"],
            class_map=class_map,
            filters={
                "exclude_cannot_classify": data["exclude_cannot_classify"],
                "scans": data["scans"],
                "exclude_patients": data["exclude_patients"],
                "placed_by": data.get("placed_by", ""),
            },
            notes=data["notes"],
        )
        return Response(
            s.DatasetSerializer(made).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        parameters=[OpenApiParameter("other", int, required=True, description="Version id.")],
        responses={200: OpenApiTypes.OBJECT},
    )
    @action(detail=True)
    def diff(self, request, pk=None):
        """Cells added, removed and relabelled from this version to `other` (with where each
        relabelled cell's label in `other` came from, for a consensus version), and whether
        the class map and the label source changed."""
        other_id = int_param(request, "other", required=True)
        other = self.get_queryset().filter(pk=other_id).first()
        if other is None:
            raise NotFound(f"No data set version {other_id} among those you may see.")
        return Response(versions.diff_versions(self.get_object(), other).to_dict())


@extend_schema_view(
    list=extend_schema(summary="List splits"),
    create=extend_schema(summary="Make a split of a data set version"),
    retrieve=extend_schema(summary="Get a split"),
)
class SplitViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Splits of data set versions, each hashed; POST makes one (or finds the same one)."""

    serializer_class = s.SplitSerializer

    def get_queryset(self):
        found = visible_splits(self.request.user)
        found = found.select_related("dataset").defer("folds", "dataset__manifest")
        dataset = int_param(self.request, "dataset")
        return found.filter(dataset_id=dataset) if dataset is not None else found

    @extend_schema(parameters=[OpenApiParameter("dataset", int, description="Version id.")])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=s.SplitCreateSerializer, responses={201: s.SplitSerializer})
    def create(self, request):
        data = validated(s.SplitCreateSerializer, request, request.data)
        made, created = splits.make_split(
            data["dataset"],
            data["strategy"],
            request.user,
            k=data["k"],
            seed=data["seed"],
            fractions=data.get("fractions"),
            grouped=data["grouped"],
        )
        return Response(
            s.SplitSerializer(made).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


@extend_schema_view(
    list=extend_schema(summary="List exports"),
    create=extend_schema(summary="Queue an export of a split"),
    retrieve=extend_schema(summary="Get an export and its progress"),
    cancel=extend_schema(summary="Cancel an export"),
    download=extend_schema(summary="Download a finished export"),
)
class ExportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Exports of splits: POST queues one (202); poll it for `status`, `done` / `total`; its
    `download` URL serves the zip once it is done; `cancel/` ends an unfinished one."""

    serializer_class = s.ExportSerializer

    def get_queryset(self):
        found = visible_exports(self.request.user)
        split = int_param(self.request, "split")
        return found.filter(split_id=split) if split is not None else found

    @extend_schema(parameters=[OpenApiParameter("split", int, description="Split id.")])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=s.ExportCreateSerializer, responses={202: s.ExportSerializer})
    @transaction.atomic
    def create(self, request):
        data = validated(s.ExportCreateSerializer, request, request.data)
        export = exports.request_export(data["split"], data["format"], request.user)
        start_export(export)
        return Response(s.ExportSerializer(export).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=s.ExportSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """End a queued or running export at once; no file of it is kept."""
        export = exports.cancel_export(self.get_object())
        return Response(s.ExportSerializer(export).data)

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    @action(detail=True)
    def download(self, request, pk=None):
        """The export's zip."""
        export = self.get_object()
        if export.status != Export.Status.DONE:
            raise ValidationError({"detail": f"Export {export.pk} is {export.status}, not done."})
        response = FileResponse(
            default_storage.open(export.file, "rb"),
            as_attachment=True,
            filename=f"cytomark-{export.format}-split{export.split_id}-{export.pk}.zip",
            content_type="application/zip",
        )
        response["ETag"] = f'"{export.sha256}"'
        return response
