"""Top-level routes: pages, the admin, API v1 and its generated OpenAPI schema and docs."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from annotator import tile_links
from annotator import views as annotator_views
from annotator.api import imagery
from core.api import docs
from core.health import health
from datasets import views as datasets_views
from mltasks import views as mltasks_views

urlpatterns = [
    path("", annotator_views.home, name="home"),
    path(
        "studies/<slug:study_name>/scans/<int:scan_id>/",
        annotator_views.annotate,
        name="annotate",
    ),
    path("studies/<slug:study_name>/scans/add/", annotator_views.add_scans_page, name="add-scans"),
    path("studies/<slug:study_name>/rounds/", annotator_views.rounds_page, name="rounds"),
    path(
        "studies/<slug:study_name>/agreement/",
        annotator_views.agreement_page,
        name="agreement",
    ),
    path("studies/<slug:study_name>/patients/", annotator_views.patients_page, name="patients"),
    path("studies/<slug:study_name>/datasets/", datasets_views.datasets_page, name="datasets"),
    path("studies/<slug:study_name>/decision/", mltasks_views.decision_page, name="decision"),
    path("studies/<slug:study_name>/training/", mltasks_views.training_page, name="training"),
    path("training/<int:run_id>/", mltasks_views.run_report_page, name="training-report"),
    path("training/<int:run_id>/counts/", mltasks_views.smear_counts_page, name="smear-counts"),
    path(
        "training/<int:run_id>/scans/<int:scan_id>/gallery/",
        mltasks_views.gallery_page,
        name="cell-gallery",
    ),
    path("queue/<int:round_id>/", annotator_views.queue_page, name="queue"),
    path("adjudications/<int:round_id>/", annotator_views.adjudication_page, name="adjudicate"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("health/", health, name="health"),
    # Signed tile links (annotator/tile_links.py); nginx answers most of them itself.
    re_path(
        rf"^{tile_links.URL_PREFIX.strip('/')}/(?P<user_id>[0-9]{{1,18}})/"
        rf"(?P<epoch>{tile_links.EPOCH_PATTERN})/(?P<expires>[0-9]{{1,18}})/"
        rf"(?P<signature>{tile_links.SIGNATURE_PATTERN})/(?P<scan_key>{tile_links.SCAN_KEY_PATTERN})/"
        r"(?P<level>[0-9]{1,4})/(?P<col>[0-9]{1,9})_(?P<row>[0-9]{1,9})\.jpeg$",
        imagery.signed_tile,
        name="signed-tile",
    ),
    path("admin/", admin.site.urls),
    path("api/v1/", include("datasets.api.urls")),
    path("api/v1/", include("mltasks.api.urls")),
    path("api/v1/", include("annotator.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", docs.swagger_view(), name="api-docs"),
    path("api/redoc/", docs.redoc_view(), name="api-redoc"),
]

handler400 = "core.api.errors.json_bad_request"
handler403 = "core.api.errors.json_permission_denied"
handler404 = "core.api.errors.json_not_found"
handler500 = "core.api.errors.json_server_error"
