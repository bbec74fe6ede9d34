"""API of agreement rounds: coordinators create blinded rounds and repeats and watch progress;
blinded raters work through their queue by opaque item tokens."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import ConflictError

from .. import access, blinding, rounds
from ..models import Membership, Round
from . import serializers as s


@extend_schema_view(
    list=extend_schema(summary="List rounds"),
    create=extend_schema(summary="Create a blinded round"),
    retrieve=extend_schema(summary="Get a round"),
    repeat=extend_schema(summary="Schedule a repeat of a blinded round"),
)
class RoundViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Your own rounds; coordinators, data scientists and admins see every round of a study.
    Coordinators create blinded rounds (POST) and schedule repeats (POST .../repeat/)."""

    serializer_class = s.RoundSerializer

    def get_queryset(self):
        queryset = (
            access.visible_rounds(self.request.user)
            .select_related("rater", "study", "repeats", "reference")
            .order_by("id")
        )
        study = self.request.query_params.get("study")
        if study:
            queryset = queryset.filter(study__name=study)
        return rounds.with_progress(queryset)

    def get_serializer_context(self):
        context = super().get_serializer_context()
        user = self.request.user
        overseen = Membership.objects.filter(user=user, role__in=access.OVERSEEING_ROLES)
        context["overseen_study_ids"] = (
            {r.study_id for r in Round.objects.only("study_id")}
            if user.is_superuser
            else set(overseen.values_list("study_id", flat=True))
        )
        return context

    @extend_schema(
        parameters=[OpenApiParameter("study", str, description="Only rounds of this study.")]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def _answer(self, round_: Round, status_code: int) -> Response:
        round_ = self.get_queryset().get(pk=round_.pk)
        body = s.RoundSerializer(round_, context=self.get_serializer_context()).data
        return Response(body, status=status_code)

    @extend_schema(request=s.RoundCreateSerializer, responses={201: s.RoundSerializer})
    def create(self, request, *args, **kwargs):
        form = s.RoundCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        round_ = rounds.create_blinded_round(
            data["study"],
            data["rater"],
            request.user,
            mode=data["mode"],
            seed=data.get("seed"),
            per_class=data.get("per_class"),
            fraction=data.get("fraction"),
            reference=data.get("reference"),
            name=data["name"],
        )
        return self._answer(round_, status.HTTP_201_CREATED)

    @extend_schema(request=s.RepeatCreateSerializer, responses={201: s.RoundSerializer})
    @action(detail=True, methods=["post"])
    def repeat(self, request, pk=None):
        """Schedule a repeat: the same rater, the same cells, a new order, a washout date."""
        form = s.RepeatCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        round_ = rounds.schedule_repeat(
            self.get_object(),
            request.user,
            not_before=data["not_before"],
            seed=data.get("seed"),
            name=data["name"],
        )
        return self._answer(round_, status.HTTP_201_CREATED)


QUEUE_ROUNDS = inline_serializer(
    "QueueRound",
    many=True,
    fields={
        "id": serializers.IntegerField(),
        "name": serializers.CharField(),
        "kind": serializers.CharField(),
        "done": serializers.IntegerField(),
        "total": serializers.IntegerField(),
        "status": serializers.ChoiceField(choices=["open", "waiting", "closed"]),
        "not_before": serializers.DateTimeField(allow_null=True),
        "why": serializers.CharField(),
    },
)
QUEUE_ITEM = inline_serializer(
    "QueueItem",
    {
        "token": serializers.CharField(),
        "position": serializers.IntegerField(),
        "total": serializers.IntegerField(),
        "done": serializers.IntegerField(),
        "answer": serializers.DictField(allow_null=True),
        "next_unanswered": serializers.IntegerField(allow_null=True),
        "patch": serializers.CharField(),
    },
)


def item_body(item: blinding.QueueItem) -> dict:
    answer = item.answer
    return {
        "token": item.token,
        "position": item.position,
        "total": item.total,
        "done": item.done,
        "answer": (
            {"node": answer.node, "cannot_classify": answer.cannot_classify} if answer else None
        ),
        "next_unanswered": item.next_unanswered,
        "patch": reverse("queue-patch", args=[item.token]),
    }


@extend_schema_view(
    get=extend_schema(summary="List your blinded rounds"),
)
class QueueListView(APIView):
    """Your blinded rounds and repeats, with progress and whether each can be opened now."""

    @extend_schema(responses=QUEUE_ROUNDS)
    def get(self, request):
        return Response(blinding.queue_summary(request.user))


@extend_schema_view(
    get=extend_schema(summary="Your progress in a blinded round"),
)
class QueueRoundView(APIView):
    """One of your blinded rounds: progress and the first unanswered position."""

    @extend_schema(
        responses=inline_serializer(
            "QueueRoundState",
            {
                "id": serializers.IntegerField(),
                "name": serializers.CharField(),
                "done": serializers.IntegerField(),
                "total": serializers.IntegerField(),
                "first_unanswered": serializers.IntegerField(allow_null=True),
            },
        )
    )
    def get(self, request, round_id: int):
        round_ = blinding.rater_round(request.user, round_id)
        rounds.require_open(round_)
        state = rounds.progress([round_])[0]
        return Response(
            {
                "id": round_.pk,
                "name": round_.name,
                "done": state.done,
                "total": state.total,
                "first_unanswered": blinding.first_unanswered(round_),
            }
        )


@extend_schema_view(
    get=extend_schema(summary="An item of your blinded round, by position"),
)
class QueueItemView(APIView):
    """The item at a position (1-based) of your blinded round: its token, patch URL and your
    answer in this round so far."""

    @extend_schema(responses=QUEUE_ITEM)
    def get(self, request, round_id: int, position: int):
        round_ = blinding.rater_round(request.user, round_id)
        return Response(item_body(blinding.queue_item(round_, position)))


@extend_schema_view(
    put=extend_schema(summary="Answer an item of your blinded round"),
)
class QueueAnswerView(APIView):
    """Answer an item (a node code, or cannot_classify); answering again changes the answer."""

    @extend_schema(request=s.QueueAnswerSerializer, responses=QUEUE_ITEM)
    def put(self, request, token: str):
        form = s.QueueAnswerSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            item = blinding.answer_item(
                request.user,
                token,
                node=data.get("node"),
                cannot_classify=data["cannot_classify"],
                seconds_spent=data["seconds_spent"],
            )
        except ConflictError:
            # The shared conflict answer names the label's cell; here only the item may show.
            raise ConflictError(
                "This item was answered a moment ago in another window; reload it."
            ) from None
        return Response(item_body(item))
