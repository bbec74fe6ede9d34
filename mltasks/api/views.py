"""API of training runs: start, watch, cancel, read the report and its plots."""

from __future__ import annotations

from pathlib import PurePosixPath

from django.core.files.storage import default_storage
from django.db import transaction
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from annotator.access import OVERSEEING_ROLES, require_role
from core.api.fields import IdField
from core.api.scoping import ScopedModelSerializer, ScopedSerializer
from datasets.models import Split

from .. import export, runs
from ..access import visible_runs
from ..models import TrainingRun
from ..tasks import preannotate as preannotate_task
from ..tasks import queue_run
from .screening import SmearCountActions

DOWNLOAD_TYPES = {".json": "application/json", ".md": "text/markdown"}


class TrainingRunSerializer(ScopedModelSerializer):
    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "split",
            "config",
            "status",
            "cancel_requested",
            "progress",
            "error",
            "device",
            "code_version",
            "created_at",
            "started_at",
            "finished_at",
            "mlflow_run_id",
            "mlflow_experiment_id",
            "tracking_error",
        ]


class TrainingRunCreateSerializer(ScopedSerializer):
    split = IdField(queryset=Split.objects.all())
    config = serializers.DictField(required=False, default=dict, help_text="docs/training.md")


@extend_schema_view(
    list=extend_schema(summary="List training runs"),
    create=extend_schema(summary="Start a training run"),
    retrieve=extend_schema(summary="Get a training run and its progress"),
    cancel=extend_schema(summary="Cancel a training run"),
    preannotate=extend_schema(summary="Pre-annotate cells with a run's models"),
    report=extend_schema(summary="Report of a finished training run"),
    plot=extend_schema(summary="A plot of a training run's report"),
    download=extend_schema(summary="Download a fold model (ONNX, TorchScript) or the model card"),
)
class TrainingRunViewSet(
    SmearCountActions, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Training runs of the splits of your studies (coordinators, data scientists, admins).
    POST starts one on the `training` queue (202); poll `progress`; `cancel/` stops it."""

    serializer_class = TrainingRunSerializer

    def get_queryset(self):
        return visible_runs(self.request.user).defer("report")

    @extend_schema(request=TrainingRunCreateSerializer, responses={202: TrainingRunSerializer})
    @transaction.atomic
    def create(self, request):
        form = TrainingRunCreateSerializer(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        run = runs.start_run(
            form.validated_data["split"], request.user, form.validated_data["config"]
        )
        queue_run(run)
        return Response(TrainingRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=TrainingRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop the run at its next step; nothing of it is published."""
        run = runs.request_cancel(self.get_object())
        return Response(TrainingRunSerializer(run).data)

    @extend_schema(request=None, responses={202: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def preannotate(self, request, pk=None):
        """Queue pre-annotation: the run's models suggest a class for every cell of the study
        that no gold round labelled yet; the gold-round screen shows the suggestions."""
        run = self.get_object()
        require_role(request.user, run.split.dataset.study, OVERSEEING_ROLES, "pre-annotate")
        if run.status != TrainingRun.Status.DONE:
            raise ValidationError({"detail": f"Run {run.pk} is {run.status}, not done."})
        transaction.on_commit(lambda: preannotate_task.delay(run.pk))
        return Response({"queued": True, "run": run.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True)
    def report(self, request, pk=None):
        """The report of a finished run (JSON); plot files under `plots/`."""
        run = TrainingRun.objects.get(pk=self.get_object().pk)
        if run.status != TrainingRun.Status.DONE:
            raise NotFound(f"Run {run.pk} is {run.status}: its report exists once it is done.")
        return Response({**run.report, "device": run.device, "code_version": run.code_version})

    @extend_schema(
        parameters=[OpenApiParameter("name", str, required=True, description="A plot's file.")],
        responses={(200, "image/png"): OpenApiTypes.BINARY},
    )
    @action(detail=True)
    def plot(self, request, pk=None):
        """One of the report's PNG files (`?name=` as listed in the report)."""
        run = TrainingRun.objects.get(pk=self.get_object().pk)
        name = request.query_params.get("name", "")
        listed = set((run.report.get("plots") or {}).values()) | {
            item["file"] for item in run.report.get("saliency", [])
        }
        if name not in listed:
            raise NotFound(f"Run {run.pk} has no plot {name!r}.")
        return FileResponse(default_storage.open(name, "rb"), content_type="image/png")

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "file",
                str,
                required=True,
                description="fold-K.onnx, fold-K.ts.pt, fold-K.pt (state dict), "
                "model-card.json or model-card.md",
            )
        ],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/markdown"): OpenApiTypes.STR,
        },
    )
    @action(detail=True)
    def download(self, request, pk=None):
        """A file of a finished run's models (`?file=` one of `exports` in the report, or a
        fold's weights): ONNX and TorchScript take an (N, 3, H, W) float batch and give class
        probabilities; the model card says how (docs/training.md)."""
        run = TrainingRun.objects.get(pk=self.get_object().pk)
        if run.status != TrainingRun.Status.DONE:
            raise NotFound(f"Run {run.pk} is {run.status}: its models exist once it is done.")
        wanted = request.query_params.get("file", "")
        name = export.download_files(run).get(wanted)
        if name is None:
            raise NotFound(f"Run {run.pk} has no file {wanted!r}.")
        if not default_storage.exists(name):
            raise NotFound(f"The file {wanted!r} of run {run.pk} is missing from storage.")
        content_type = DOWNLOAD_TYPES.get(PurePosixPath(name).suffix, "application/octet-stream")
        return FileResponse(
            default_storage.open(name, "rb"),
            as_attachment=True,
            filename=f"run-{run.pk}-{wanted}",
            content_type=content_type,
        )
