"""Patches cut in the background by a real Celery worker (Redis broker, the test database):
labels saved through the API are answered at once, and their cells' patches appear in storage
a moment later, written by the worker."""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path

import openslide
import pytest
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.test import Client
from PIL import Image

from annotator.models import Cell

from .conftest import client_for
from .workers import celery_worker

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

QUEUES = ("tiles", "default")


@pytest.fixture(scope="module")
def worker(django_db_setup, tmp_path_factory):
    """A Celery worker on the tests' database, Redis and a media folder of its own; its log."""
    media = tmp_path_factory.mktemp("worker-media")
    with celery_worker(QUEUES, media, {"PATCH_BATCH_DELAY": "1"}) as log:
        yield media, log


@pytest.fixture
def worker_media(worker, settings):
    """This test stores files where the worker does, in a folder emptied for it."""
    media, _ = worker
    shutil.rmtree(media)
    media.mkdir()
    settings.MEDIA_ROOT = media
    return media


@pytest.fixture
def cells(worker_media, study, scan, annotator):
    cache.delete(f"patch-batch:{scan.pk}")
    return [
        Cell.objects.create(study=study, scan=scan, x=x, y=y, created_by=annotator)
        for x, y in ((700, 600), (2200, 1700))
    ]


def wait_for_patches(cells: list[Cell], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while Cell.objects.filter(pk__in=[c.pk for c in cells], cut_patch="").exists():
        assert time.monotonic() < deadline, f"No patch was cut within {seconds} s."
        time.sleep(0.05)
    for cell in cells:
        cell.refresh_from_db()


def label(client, cell: Cell) -> None:
    response = client.post(
        "/api/v1/labels/", {"cell": cell.pk, "node": "NGS", "seconds_spent": 2}, format="json"
    )
    assert response.status_code == 201, response.json()


def test_labelled_cells_get_their_patches_from_the_worker(worker, cells, scan, annotator, settings):
    settings.PATCH_BATCH_DELAY = 1.0
    client = client_for(annotator)
    for cell in cells:
        label(client, cell)
        cell.refresh_from_db()
        assert cell.cut_patch == "", "the web request cut the patch itself"
    assert not (Path(settings.MEDIA_ROOT) / "patches").exists()

    wait_for_patches(cells)
    slide = openslide.open_slide(scan.file.path)
    try:
        for cell in cells:
            assert cell.cut_patch.endswith(f"/{cell.x}_{cell.y}_400px_ffffff.png")
            assert default_storage.exists(cell.cut_patch)
            with default_storage.open(cell.cut_patch, "rb") as stored:
                image = Image.open(io.BytesIO(stored.read())).convert("RGB")
            expected = slide.read_region((cell.x - 200, cell.y - 200), 0, (400, 400))
            assert image.tobytes() == expected.convert("RGB").tobytes()
    finally:
        slide.close()
    assert list(Path(settings.MEDIA_ROOT).rglob("*.part")) == []
    _, log = worker
    succeeded = r"Task annotator\.tasks\.cut_patches\[[-0-9a-f]+\] succeeded"
    assert re.search(succeeded, log.read_text(errors="replace"))

    # The viewer then gets the stored file, named as the worker stored it.
    browser = Client()
    browser.force_login(annotator)
    response = browser.get(f"/api/v1/cells/{cells[0].pk}/patch.png")
    assert response.status_code == 200
    assert response["ETag"] == f'"{cells[0].cut_patch}"'
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")


def test_a_label_saved_just_after_a_batch_gets_its_patch_too(worker, cells, annotator, settings):
    # A short delay: the first batch is done well within a second, while the batch key lasts
    # at least one second.
    settings.PATCH_BATCH_DELAY = 0.2
    client = client_for(annotator)
    first, second = cells
    label(client, first)
    wait_for_patches([first], seconds=15)
    label(client, second)
    second.refresh_from_db()
    assert second.cut_patch == ""
    wait_for_patches([second], seconds=15)
    assert default_storage.exists(second.cut_patch)
