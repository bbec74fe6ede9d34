"""Routes of API v1."""

from django.urls import include, path
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("studies", views.StudyViewSet, basename="study")
router.register("taxonomies", views.TaxonomyViewSet, basename="taxonomy")
router.register("scans", views.ScanViewSet, basename="scan")
router.register("cells", views.CellViewSet, basename="cell")
router.register("labels", views.LabelViewSet, basename="label")
router.register("rounds", views.RoundViewSet, basename="round")

urlpatterns = [
    path("auth/token/", obtain_auth_token, name="api-token"),
    path("", include(router.urls)),
]
