"""Routes of the training API (under /api/v1/)."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import views

# No API root view of its own: /api/v1/ stays the annotator router's.
router = SimpleRouter()
router.register("training-runs", views.TrainingRunViewSet, basename="training-run")

urlpatterns = [path("", include(router.urls))]
