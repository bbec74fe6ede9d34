"""The per-patient decision report of a study (mltasks.decisions) for its overseeing roles."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from annotator.diagnoses import diagnosis_study

from .. import decisions


class StudyDecisionView(APIView):
    """Evaluate a decision rule on a group's share over all of the study's patients against
    their confirmed diagnoses: from the examiners' counts and, with `run`, the model's."""

    @extend_schema(
        summary="Decide per patient: a rule on a group share against the diagnoses",
        parameters=[
            OpenApiParameter(
                "group", str, required=True, description="A taxonomy group, e.g. blast."
            ),
            OpenApiParameter("threshold", float, required=True, description="A share, 0 to 1."),
            OpenApiParameter(
                "comparison",
                str,
                enum=list(decisions.COMPARISONS),
                description="ge (default) or gt.",
            ),
            OpenApiParameter(
                "positive",
                str,
                required=True,
                description="Positive diagnosis codes, e.g. AML,ALL.",
            ),
            OpenApiParameter(
                "run",
                int,
                description="A finished training run of the study: adds the model's counts.",
            ),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request, study_id: int):
        study = diagnosis_study(request.user, "read decision reports", pk=study_id)
        return Response(
            decisions.requested_report(request.user, study, request.query_params).to_dict()
        )
