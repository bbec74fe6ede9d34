"""Routes of the datasets API (under /api/v1/)."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from . import views

# No API root view of its own: /api/v1/ stays the annotator router's.
router = SimpleRouter()
router.register("classmaps", views.ClassMapViewSet, basename="classmap")
router.register("datasets", views.DatasetViewSet, basename="dataset")
router.register("splits", views.SplitViewSet, basename="split")
router.register("exports", views.ExportViewSet, basename="export")

urlpatterns = [path("", include(router.urls))]
