"""API of panels of raters: coordinators make a panel (one blinded design for several raters)
and open adjudication rounds over the cells where it disagrees; the adjudicator lists the
disputed cells with every panel answer and records the consensus; overseers read the
majority vote.

Everything here is for the study's overseeing roles. A panel's raters are annotators, so the
panels and adjudications of their study are not among theirs: they, and members of other
studies, get the 404 of a panel that does not exist.
"""

from __future__ import annotations

from django.db.models import Prefetch
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from core.api.fields import filter_by_params, validated
from core.errors import DomainError

from .. import panels, rounds
from ..models import Panel, Round
from . import serializers as s


def adjudication_body(state: rounds.Progress) -> dict:
    round_ = state.round
    return {
        "id": round_.pk,
        "name": round_.name,
        "panel": round_.panel.name,
        "study": round_.study.name,
        "adjudicator": round_.rater.get_username(),
        "rule": round_.design.get("rule", ""),
        "share": round_.design.get("share"),
        "with_reference": bool(round_.design.get("with_reference")),
        "done": state.done,
        "total": state.total,
        "created_at": round_.created_at,
    }


def panel_body(panel: Panel) -> dict:
    """The panel with each rater's rounds (progress and status) and its adjudications."""
    states = rounds.progress(panel.rounds.all())
    rated = [state for state in states if state.round.kind != Round.Kind.ADJUDICATION]
    return {
        "id": panel.pk,
        "study": panel.study.name,
        "name": panel.name,
        "reference": panel.reference.name if panel.reference else None,
        "seed": panel.seed,
        "design": panel.design,
        "created_by": panel.created_by.get_username() if panel.created_by else None,
        "created_at": panel.created_at,
        "rounds": [
            {
                "id": state.round.pk,
                "name": state.round.name,
                "kind": state.round.kind,
                "rater": state.round.rater.get_username(),
                "repeats": state.round.repeats.name if state.round.repeats else None,
                "not_before": state.round.not_before,
                "done": state.done,
                "total": state.total,
                "status": panels.round_status(state),
            }
            for state in rated
        ],
        "adjudications": [
            adjudication_body(state)
            for state in states
            if state.round.kind == Round.Kind.ADJUDICATION
        ],
    }


def dispute_body(dispute: panels.Dispute) -> dict:
    cell, label = dispute.cell, dispute.consensus
    return {
        "position": dispute.position,
        "cell": cell.pk,
        "answers": dispute.answers,
        "reference": dispute.reference,
        "vote": dispute.vote.to_dict(),
        "consensus": (
            {
                "node": label.node.code if label.node_id else None,
                "cannot_classify": label.cannot_classify,
                "note": label.note,
                "version": label.version,
            }
            if label
            else None
        ),
        "patch": reverse("cell-patch", args=[cell.pk]),
        "scan": cell.scan_id,
        "x": cell.x if cell.scan_id else None,
        "y": cell.y if cell.scan_id else None,
    }


def _bool_param(request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise DomainError(f"{name} is true or false, not {raw[:20]!r}.", name)
    return raw in ("true", "1")


@extend_schema_view(
    list=extend_schema(summary="List panels"),
    retrieve=extend_schema(summary="Get a panel with its raters' progress"),
    create=extend_schema(summary="Create a panel of raters"),
    votes=extend_schema(summary="Majority vote of each panel cell"),
    adjudications=extend_schema(summary="Open an adjudication round"),
)
class PanelViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Panels of the studies you oversee: each rater's blinded rounds (and repeats) with
    progress, and the panel's adjudication rounds. Coordinators and admins create panels
    (POST) and open adjudications (POST .../adjudications/)."""

    serializer_class = s.PanelSerializer

    def get_queryset(self):
        queryset = (
            panels.visible_panels(self.request.user)
            .select_related("study", "reference", "created_by")
            .prefetch_related(
                Prefetch(
                    "rounds",
                    queryset=Round.objects.select_related(
                        "rater", "repeats", "study", "panel"
                    ).order_by("id"),
                )
            )
            .order_by("id")
        )
        return filter_by_params(queryset, self.request, {"study": "study__name"})

    @extend_schema(
        parameters=[OpenApiParameter("study", str, description="Only panels of this study.")]
    )
    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([panel_body(panel) for panel in page])

    def retrieve(self, request, *args, **kwargs):
        return Response(panel_body(self.get_object()))

    def _answer(self, panel: Panel, status_code: int = status.HTTP_200_OK) -> Response:
        return Response(panel_body(self.get_queryset().get(pk=panel.pk)), status=status_code)

    @extend_schema(request=s.PanelCreateSerializer, responses={201: s.PanelSerializer})
    def create(self, request, *args, **kwargs):
        data = validated(s.PanelCreateSerializer, request, request.data)
        panel = panels.create_panel(
            data["study"],
            data["raters"],
            request.user,
            name=data["name"],
            mode=data["mode"],
            seed=data.get("seed"),
            per_class=data.get("per_class"),
            fraction=data.get("fraction"),
            reference=data.get("reference"),
            repeat_not_before=data.get("repeat_not_before"),
        )
        return self._answer(panel, status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "with_reference", bool, description="Count the reference's answer as a vote."
            )
        ],
        responses=s.PanelVotesSerializer,
    )
    @action(detail=True, methods=["get"])
    def votes(self, request, pk=None):
        """Each cell's majority vote over the panel's first blinded pass, by the tie rule
        stated in `tie_rule`; no adjudication needed."""
        panel = self.get_object()
        with_reference = _bool_param(request, "with_reference")
        table = panels.panel_table(panel)
        votes = table.votes(with_reference=with_reference)
        return Response(
            {
                "panel": panel.name,
                "tie_rule": panels.TIE_RULE,
                "with_reference": with_reference,
                "raters": table.raters,
                "cells": [
                    {
                        "cell": cell,
                        "answers": dict(zip(table.raters, row, strict=True)),
                        "reference": table.reference.get(cell),
                        "vote": votes[cell].to_dict(),
                    }
                    for cell, row in zip(table.cells, table.ratings, strict=True)
                ],
            }
        )

    @extend_schema(
        request=s.AdjudicationCreateSerializer, responses={201: s.AdjudicationSerializer}
    )
    @action(detail=True, methods=["post"])
    def adjudications(self, request, pk=None):
        """Open an adjudication round for an overseer over the cells the rule picks: `any`
        (two classifying answers differ), `no-majority` (the vote has no winner), or
        `below-share` (the winner has less than `share` of the answers)."""
        panel = self.get_object()
        data = validated(s.AdjudicationCreateSerializer, request, request.data)
        made = panels.open_adjudication(
            panel,
            data["adjudicator"],
            request.user,
            rule=data["rule"],
            share=data.get("share"),
            with_reference=data["with_reference"],
            name=data["name"],
        )
        state = rounds.progress([panels.visible_adjudications(request.user).get(pk=made.pk)])[0]
        return Response(adjudication_body(state), status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(summary="List adjudication rounds"),
    retrieve=extend_schema(summary="Get an adjudication round"),
    items=extend_schema(summary="The disputed cells of an adjudication round"),
    consensus=extend_schema(summary="Record the consensus label of a disputed cell"),
)
class AdjudicationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Adjudication rounds of the panels you oversee. Their adjudicator (and the study's
    coordinators and admins) list the disputed cells with every panel answer; the adjudicator
    records the consensus of each, with a note."""

    serializer_class = s.AdjudicationSerializer

    def get_queryset(self):
        queryset = panels.visible_adjudications(self.request.user).order_by("id")
        return filter_by_params(
            queryset, self.request, {"study": "study__name", "panel": "panel__name"}
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("study", str, description="Only rounds of this study."),
            OpenApiParameter("panel", str, description="Only rounds of panels of this name."),
        ]
    )
    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(
            [adjudication_body(state) for state in rounds.progress(page)]
        )

    def retrieve(self, request, *args, **kwargs):
        return Response(adjudication_body(rounds.progress([self.get_object()])[0]))

    @extend_schema(responses=s.DisputeSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def items(self, request, pk=None):
        """Every cell of the round in its order: each panel answer by rater, the reference's
        answer, the majority vote, the consensus recorded so far, the patch URL, and for a
        cell on a scan the scan and position."""
        found = panels.disputes(self.get_object(), request.user)
        return Response([dispute_body(dispute) for dispute in found])

    @extend_schema(
        parameters=[OpenApiParameter("cell_id", int, OpenApiParameter.PATH)],
        request=s.ConsensusWriteSerializer,
        responses=s.DisputeSerializer,
    )
    @action(detail=True, methods=["put"], url_path=r"items/(?P<cell_id>[0-9]{1,18})")
    def consensus(self, request, pk=None, cell_id=None):
        """Record (or change) the consensus of one cell: a leaf code or cannot_classify, a
        note, and the version of the consensus label you saw when changing one."""
        round_ = self.get_object()
        data = validated(s.ConsensusWriteSerializer, request, request.data)
        panels.record_consensus(
            round_,
            int(cell_id),
            request.user,
            node=data.get("node"),
            cannot_classify=data["cannot_classify"],
            note=data["note"],
            expected_version=data.get("version"),
        )
        found = next(d for d in panels.disputes(round_, request.user) if d.cell.pk == int(cell_id))
        return Response(dispute_body(found))
