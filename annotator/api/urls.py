"""Routes of API v1."""

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import imagery, panels, patients, rounds, uploads, views

router = DefaultRouter()
router.register("studies", views.StudyViewSet, basename="study")
router.register("taxonomies", views.TaxonomyViewSet, basename="taxonomy")
router.register("scans", views.ScanViewSet, basename="scan")
router.register("detection-jobs", views.DetectionJobViewSet, basename="detection-job")
router.register("proposals", views.ProposalViewSet, basename="proposal")
router.register("cells", views.CellViewSet, basename="cell")
router.register("labels", views.LabelViewSet, basename="label")
router.register("rounds", rounds.RoundViewSet, basename="round")
router.register("panels", panels.PanelViewSet, basename="panel")
router.register("adjudications", panels.AdjudicationViewSet, basename="adjudication")

urlpatterns = [
    path("auth/token/", views.AuthTokenView.as_view(), name="api-token"),
    path("scans/<int:scan_id>/tiles/scan.dzi", imagery.dzi, name="scan-dzi"),
    path(
        "scans/<int:scan_id>/tiles/scan_files/<int:level>/<int:col>_<int:row>.jpeg",
        imagery.tile,
        name="scan-tile",
    ),
    path("scans/<int:scan_id>/tiles/link", imagery.tile_link, name="scan-tile-link"),
    path("cells/<int:cell_id>/patch.png", imagery.cell_patch, name="cell-patch"),
    path("cells/<int:cell_id>/context.png", imagery.cell_context, name="cell-context"),
    path("uploads/", uploads.UploadCollectionView.as_view(), name="upload-list"),
    path("uploads/<uuid:upload_id>/", uploads.UploadDetailView.as_view(), name="upload-detail"),
    path("queue/", rounds.QueueListView.as_view(), name="queue-list"),
    path("queue/<int:round_id>/", rounds.QueueRoundView.as_view(), name="queue-round"),
    path(
        "queue/<int:round_id>/items/<int:position>/",
        rounds.QueueItemView.as_view(),
        name="queue-item",
    ),
    path("queue/items/<str:token>/answer/", rounds.QueueAnswerView.as_view(), name="queue-answer"),
    path("queue/items/<str:token>/patch.png", imagery.queue_patch, name="queue-patch"),
    path(
        "studies/<int:study_id>/patients/",
        patients.StudyPatientsView.as_view(),
        name="study-patients",
    ),
    path(
        "studies/<int:study_id>/patients/import/",
        patients.DiagnosisImportView.as_view(),
        name="study-diagnosis-import",
    ),
    path(
        "studies/<int:study_id>/patients/<str:patient_code>/diagnosis/",
        patients.PatientDiagnosisView.as_view(),
        name="patient-diagnosis",
    ),
    path("", include(router.urls)),
]
