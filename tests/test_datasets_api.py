"""Dataset curation through the API and the page, with exports run by a real Celery worker on
the `exports` queue: queued, progressing, published whole, downloadable."""

from __future__ import annotations

import io
import time
import zipfile

import pytest
from django.test import Client

from datasets.models import DatasetVersion, Export, Split

from .conftest import client_for
from .workers import celery_worker

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def export_worker(django_db_setup, tmp_path_factory):
    media = tmp_path_factory.mktemp("export-worker-media")
    with celery_worker(("exports",), media) as log:
        yield media, log


@pytest.fixture
def shared_media(export_worker, settings):
    """This test stores files where the worker does."""
    media, _ = export_worker
    settings.MEDIA_ROOT = media
    return media


def _wait(export_id: int, seconds: float = 60) -> Export:
    deadline = time.monotonic() + seconds
    while True:
        export = Export.objects.get(pk=export_id)
        if export.status in ("done", "failed"):
            return export
        assert time.monotonic() < deadline, f"export {export_id} still {export.status}"
        time.sleep(0.1)


def test_curation_through_the_api_with_a_real_worker(
    shared_media, study, curated, data_scientist, export_worker
):
    client = client_for(data_scientist)
    proposal = client.get("/api/v1/classmaps/propose/", {"study": "munich"}).json()
    assert proposal["collapsed"] == ["MYO", "PMO"] and len(proposal["classes"]) == 6
    made = client.post("/api/v1/classmaps/", {"study": "munich", "name": "merged"}, format="json")
    assert made.status_code == 201 and made.json()["version"] == 1

    dataset = client.post(
        "/api/v1/datasets/", {"study": "munich", "name": "aml", "classmap": "merged"}, format="json"
    )
    assert dataset.status_code == 201, dataset.json()
    again = client.post(
        "/api/v1/datasets/", {"study": "munich", "name": "aml", "classmap": "merged"}, format="json"
    )
    assert again.status_code == 200 and again.json()["sha256"] == dataset.json()["sha256"]
    version_id = dataset.json()["id"]
    detail = client.get(f"/api/v1/datasets/{version_id}/").json()
    assert len(detail["manifest"]) == detail["cells"] == sum(detail["counts"].values())
    for method in ("put", "patch", "delete"):
        refused = getattr(client, method)(f"/api/v1/datasets/{version_id}/", {}, format="json")
        assert refused.status_code == 405, method
    assert DatasetVersion.objects.count() == 1

    split = client.post(
        "/api/v1/splits/",
        {"dataset": version_id, "strategy": "patient-kfold", "k": 3, "seed": 1},
        format="json",
    )
    assert split.status_code == 201, split.json()
    assert split.json()["patient_check"]["patients_in_two_folds"] == 0
    assert client.delete(f"/api/v1/splits/{split.json()['id']}/").status_code == 405

    queued = client.post(
        "/api/v1/exports/", {"split": split.json()["id"], "format": "imagefolder"}, format="json"
    )
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    export = _wait(queued.json()["id"])
    assert export.status == "done", export.error
    body = client.get(f"/api/v1/exports/{export.pk}/").json()
    assert body["done"] == body["total"] == detail["cells"]
    download = client.get(body["download"])
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    assert download["Content-Disposition"] == (
        f'attachment; filename="cytomark-imagefolder-split{split.json()["id"]}-{export.pk}.zip"'
    )
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    assert archive.testzip() is None
    assert len([n for n in archive.namelist() if n.endswith(".png")]) == detail["cells"]


def test_bad_requests_and_other_roles(shared_media, study, curated, data_scientist, annotator):
    client = client_for(data_scientist)
    cases = [
        ("/api/v1/datasets/", {"study": "munich", "name": "x", "classmap": "nope"}, "No class map"),
        ("/api/v1/datasets/", {"study": "munich", "name": "x", "source": "r9"}, "No round named"),
        ("/api/v1/classmaps/", {"study": "munich", "name": "m", "collapse": ["NGS"]}, "a leaf"),
        ("/api/v1/splits/", {"dataset": 999999, "strategy": "holdout"}, "does not exist"),
        ("/api/v1/exports/", {"split": 999999, "format": "csv"}, "does not exist"),
        # JSON's 1e400 reads as an infinite float: too large for any id, a 400 not a 500.
        ("/api/v1/splits/", '{"dataset": 1e400, "strategy": "holdout"}', "Incorrect type"),
        ("/api/v1/exports/", '{"split": 1e400, "format": "csv"}', "Incorrect type"),
        ("/api/v1/training-runs/", '{"split": 1e400}', "Incorrect type"),
        ("/api/v1/training-runs/", {"split": 0, "config": {"threads": "x"}}, "does not exist"),
    ]
    for url, body, message in cases:
        if isinstance(body, str):
            response = client.generic("POST", url, body, content_type="application/json")
        else:
            response = client.post(url, body, format="json")
        assert response.status_code == 400, (url, response.json())
        assert message in str(response.json()), (url, response.json())
    version = client.post("/api/v1/datasets/", {"study": "munich", "name": "d"}, format="json")
    wrong = client.post(
        "/api/v1/splits/",
        {"dataset": version.json()["id"], "strategy": "holdout", "fractions": {"train": 0.9}},
        format="json",
    )
    assert wrong.status_code == 400 and "add up to 1" in str(wrong.json())

    outsider = client_for(annotator)
    assert outsider.get("/api/v1/datasets/").json()["results"] == []
    assert outsider.get(f"/api/v1/datasets/{version.json()['id']}/").status_code == 404
    refused = outsider.post("/api/v1/datasets/", {"study": "munich", "name": "y"}, format="json")
    assert refused.status_code == 400 and not DatasetVersion.objects.filter(name="y").exists()
    assert Split.objects.count() == 0


def test_the_page_curates_and_exports(shared_media, study, curated, data_scientist):
    browser = Client()
    browser.force_login(data_scientist)
    page = browser.get("/studies/munich/datasets/")
    assert page.status_code == 200
    assert b"6 classes" in page.content and b'data-code="MYO"' in page.content

    def post(**data):
        response = browser.post("/studies/munich/datasets/", data, follow=True)
        assert response.status_code == 200
        return response.content.decode()

    assert "Class map merged v1 saved" in post(action="classmap", name="merged")
    merged = study.class_maps.get().pk
    shown = post(action="dataset", name="aml", classmap=merged, source="gold")
    assert "Data set aml v1 made" in shown
    version = DatasetVersion.objects.get()
    shown = post(action="split", dataset=version.pk, strategy="stratified-kfold", k=20, seed=0)
    assert "Class EBO has 11 cell(s), fewer than the 20 folds" in shown
    split = Split.objects.get()
    for export_format in ("imagefolder", "csv", "json"):
        assert "queued" in post(action="export", split=split.pk, format=export_format)
    for export in Export.objects.all():
        assert _wait(export.pk).status == "done"
    page = browser.get("/studies/munich/datasets/").content.decode()
    assert page.count("download (") == 3
