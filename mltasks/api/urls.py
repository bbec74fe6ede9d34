"""Routes of the training API (under /api/v1/)."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import decisions, screening, views

# No API root view of its own: /api/v1/ stays the annotator router's.
router = SimpleRouter()
router.register("training-runs", views.TrainingRunViewSet, basename="training-run")
router.register(
    "scan-classifications", screening.ScanClassificationViewSet, basename="scan-classification"
)

urlpatterns = [
    path(
        "studies/<int:study_id>/decision/",
        decisions.StudyDecisionView.as_view(),
        name="study-decision",
    ),
    path("", include(router.urls)),
    path(
        "classified-cells/<int:classified_cell_id>/patch.jpeg",
        screening.classified_cell_patch,
        name="classified-cell-patch",
    ),
]
