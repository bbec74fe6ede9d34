"""Routes of the training API (under /api/v1/)."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import decisions, views

# No API root view of its own: /api/v1/ stays the annotator router's.
router = SimpleRouter()
router.register("training-runs", views.TrainingRunViewSet, basename="training-run")

urlpatterns = [
    path(
        "studies/<int:study_id>/decision/",
        decisions.StudyDecisionView.as_view(),
        name="study-decision",
    ),
    path("", include(router.urls)),
]
