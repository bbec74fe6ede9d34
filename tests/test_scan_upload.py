"""Getting scans in through the API: tus uploads, a plain file, a server path, with the real-format
fixtures of OpenSlide (docs/scans.md).

Cora coordinates munich. Every good fixture must come out registered with a DZI, a tile and a
patch that answer; every bad one refused with the reason and nothing left behind: no row, no
stored file, no upload. A DICOM series arrives as a zip, as a folder upload and as a server path.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path
from xml.etree import ElementTree

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient

from annotator import annotation
from annotator.models import Membership, Scan, ScanUpload
from annotator.scans import ScanError, find_slide, slide_files
from annotator.uploads import data_path, upload_dir

from .conftest import SHARED_DATA, client_for, tus_metadata
from .factories import UserFactory

FIXTURES = SHARED_DATA / "openslide-fixtures"
GOOD = ["small.svs", "boxes.tiff", "boxes.png"]
BAD = {
    "unreadable.svs": "pixels cannot be read",
    "unopenable.tiff": "not supported",
}
DICOM = ["boxes_0.dcm", "boxes_1.dcm"]
TUS = {"HTTP_TUS_RESUMABLE": "1.0.0"}


def create(client, length: int, filename: str, study: str = "munich", relative_path=None):
    extra = {"relative_path": relative_path} if relative_path else {}
    return client.post(
        "/api/v1/uploads/",
        HTTP_UPLOAD_LENGTH=str(length),
        HTTP_UPLOAD_METADATA=tus_metadata(filename=filename, study=study, **extra),
        **TUS,
    )


def send(client, location: str, data: bytes, offset: int, **headers):
    headers = {"content_type": "application/offset+octet-stream", **headers}
    return client.generic("PATCH", location, data, HTTP_UPLOAD_OFFSET=str(offset), **TUS, **headers)


def upload(client, data: bytes, filename: str, relative_path=None, chunk: int = 1000) -> str:
    """Send `data` in chunks; the upload's id."""
    response = create(client, len(data), filename, relative_path=relative_path)
    assert response.status_code == 201, response.content
    location = response["Location"]
    for offset in range(0, len(data), chunk):
        answer = send(client, location, data[offset : offset + chunk], offset)
        assert answer.status_code == 204, answer.content
        assert answer["Upload-Offset"] == str(min(offset + chunk, len(data)))
    return location.rstrip("/").rsplit("/", 1)[1]


def register(client, ids: list[str], **extra):
    body = {"study": "munich", "uploads": ids, **extra}
    return client.post("/api/v1/scans/", body, format="json")


def dicom_zip(prefix: str = "boxes/") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name in DICOM:
            bundle.write(FIXTURES / name, prefix + name)
    return buffer.getvalue()


def study_folder(import_root, name: str, files: list[str]) -> Path:
    """A fresh folder of the fixtures under munich's own import folder."""
    folder = import_root / "munich" / f"{name}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    for file in files:
        shutil.copy(FIXTURES / file, folder / file)
    return folder


def stored_files() -> list[Path]:
    scans = Path(settings.MEDIA_ROOT) / "scans"
    return [path for path in scans.rglob("*") if path.is_file()] if scans.exists() else []


def content(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def assert_viewable(client, scan_id: int, annotator, patch: bool = True) -> None:
    """The DZI, its most detailed tile and (with `patch`) a cell's patch answer with images."""
    dzi = client.get(f"/api/v1/scans/{scan_id}/tiles/scan.dzi")
    assert dzi.status_code == 200
    size = ElementTree.fromstring(dzi.content).find("{*}Size")
    level = max(int(size.get("Width")) - 1, int(size.get("Height")) - 1, 1).bit_length()
    tile = client.get(f"/api/v1/scans/{scan_id}/tiles/scan_files/{level}/0_0.jpeg")
    assert tile.status_code == 200, tile.content
    assert Image.open(io.BytesIO(content(tile))).format == "JPEG"
    if not patch:
        return
    scan = Scan.objects.get(pk=scan_id)
    cell = annotation.create_cell(scan.studies.get(), scan, 8, 8, annotator)
    cut = client.get(f"/api/v1/cells/{cell.pk}/patch.png")
    assert cut.status_code == 200
    assert Image.open(io.BytesIO(content(cut))).format == "PNG"


def assert_nothing_left(message_part: str, response) -> None:
    assert response.status_code == 400, response.content
    assert message_part in str(response.json()), response.json()
    assert Scan.objects.count() == 0
    assert stored_files() == []
    assert ScanUpload.objects.count() == 0
    assert not upload_dir().exists() or list(upload_dir().iterdir()) == []


@pytest.fixture
def cora(coordinator):
    """Cora's browser: a session, as the upload page and the viewer send."""
    client = APIClient()
    client.force_login(coordinator)
    return client


# The protocol


def test_options_tell_the_tus_version_extensions_and_limit(cora):
    response = cora.options("/api/v1/uploads/")
    assert response.status_code == 204
    assert response["Tus-Resumable"] == response["Tus-Version"] == "1.0.0"
    assert response["Tus-Extension"] == "creation,termination,expiration"
    assert response["Tus-Max-Size"] == str(settings.SCAN_UPLOAD_MAX_BYTES)
    anonymous = APIClient().options("/api/v1/uploads/")
    assert anonymous.status_code == 204 and anonymous["Tus-Version"] == "1.0.0"
    assert APIClient().post("/api/v1/uploads/", **TUS).status_code in (401, 403)


def test_an_interrupted_upload_resumes_where_head_says(cora, annotator):
    data = (FIXTURES / "boxes.tiff").read_bytes()
    response = create(cora, len(data), "boxes.tiff")
    location = response["Location"]
    assert location.startswith("/api/v1/uploads/") and response["Upload-Expires"]
    half = len(data) // 2
    assert send(cora, location, data[:half], 0).status_code == 204

    head = cora.head(location, **TUS)
    assert head.status_code == 200
    assert head["Upload-Offset"] == str(half) and head["Upload-Length"] == str(len(data))
    assert head["Cache-Control"] == "no-store"
    unfinished = register(cora, [location.rstrip("/").rsplit("/", 1)[1]])
    assert unfinished.status_code == 400
    assert "unfinished" in unfinished.json()["uploads"][0]

    assert send(cora, location, data[half:], int(head["Upload-Offset"])).status_code == 204
    response = register(cora, [location.rstrip("/").rsplit("/", 1)[1]], patient="P-9")
    assert response.status_code == 201, response.content
    scan = Scan.objects.get()
    assert scan.original_name == "boxes.tiff" and scan.patient.code == "P-9"
    assert ScanUpload.objects.count() == 0 and list(upload_dir().iterdir()) == []
    assert_viewable(cora, scan.pk, annotator)


def test_the_protocols_refusals(cora, coordinator):
    data = b"x" * 100
    location = create(cora, len(data), "a.svs")["Location"]
    assert send(cora, location, data[:10], 0).status_code == 204

    wrong = send(cora, location, data[10:20], 5)
    assert wrong.status_code == 409 and "10 bytes received" in wrong.json()["detail"]
    assert wrong.json()["current"] == {"offset": 10}
    past = send(cora, location, b"y" * 200, 10)
    assert past.status_code == 400 and "past the upload's length" in str(past.json())
    typed = send(cora, location, b"y", 10, content_type="application/octet-stream")
    assert typed.status_code == 415 and "offset+octet-stream" in str(typed.json())
    untagged = cora.head(location)
    assert untagged.status_code == 412 and untagged["Tus-Version"] == "1.0.0"
    assert cora.head(location, **TUS)["Upload-Offset"] == "10"

    assert cora.delete(location, **TUS).status_code == 204
    assert cora.head(location, **TUS).status_code == 404
    assert ScanUpload.objects.count() == 0 and list(upload_dir().iterdir()) == []


def test_limits_on_the_upload_and_on_each_chunk(cora, settings):
    settings.SCAN_UPLOAD_MAX_BYTES = 1000
    settings.SCAN_UPLOAD_CHUNK_MAX_BYTES = 100
    too_large = create(cora, 1001, "big.svs")
    assert too_large.status_code == 413
    assert "1,000 bytes" in str(too_large.json()) and "SCAN_UPLOAD_MAX_BYTES" in str(
        too_large.json()
    )
    location = create(cora, 1000, "big.svs")["Location"]
    chunk = send(cora, location, b"z" * 101, 0)
    assert chunk.status_code == 413 and "SCAN_UPLOAD_CHUNK_MAX_BYTES" in str(chunk.json())
    assert cora.head(location, **TUS)["Upload-Offset"] == "0"


def test_only_the_uploader_touches_an_upload(cora, study):
    location = create(cora, 10, "a.svs")["Location"]
    colleague = UserFactory(username="cleo")
    Membership.objects.create(study=study, user=colleague, role=Membership.Role.COORDINATOR)
    other = client_for(colleague)
    assert other.head(location, **TUS).status_code == 404
    assert send(other, location, b"x" * 10, 0).status_code == 404
    assert other.delete(location, **TUS).status_code == 404
    upload_id = location.rstrip("/").rsplit("/", 1)[1]
    assert send(cora, location, b"x" * 10, 0).status_code == 204
    refused = register(other, [upload_id])
    assert refused.status_code == 400 and "No upload" in refused.json()["uploads"][0]
    assert ScanUpload.objects.count() == 1


def test_raters_and_outsiders_create_no_upload(study, annotator, outsider, rater):
    for user, code in ((annotator, 403), (rater, 403), (outsider, 404)):
        response = create(client_for(user), 10, "a.svs")
        assert response.status_code == code, (user, response.content)
    assert "coordinator" in create(client_for(rater), 10, "a.svs").json()["detail"]
    assert "among yours" in create(client_for(outsider), 10, "a.svs").json()["detail"]
    assert ScanUpload.objects.count() == 0


def test_expired_uploads_are_removed(cora):
    location = create(cora, 10, "a.svs")["Location"]
    old = ScanUpload.objects.get()
    ScanUpload.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert cora.head(location, **TUS).status_code == 404
    stray = upload_dir() / "cytomark-upload-left-by-a-dead-process"
    stray.mkdir()
    (stray / "slide.svs").write_bytes(b"x")
    long_ago = (timezone.now() - timedelta(hours=25)).timestamp()
    os.utime(stray, (long_ago, long_ago))
    fresh = upload_dir() / "cytomark-upload-in-use"
    fresh.mkdir()
    create(cora, 10, "b.svs")
    assert not data_path(old).exists() and not stray.exists() and fresh.exists()
    assert list(ScanUpload.objects.values_list("filename", flat=True)) == ["b.svs"]


def test_a_relative_path_out_of_the_folder_is_refused(cora):
    response = create(cora, 10, "a.dcm", relative_path="../../etc/a.dcm")
    assert response.status_code == 400 and "inside the uploaded folder" in str(response.json())


# Every fixture, every way in


WAYS = ["tus", "file", "path"]


def send_fixture(way: str, cora, import_root, name: str):
    """Register a fixture by tus upload, by a plain upload or by a server path."""
    if way == "tus":
        return register(cora, [upload(cora, (FIXTURES / name).read_bytes(), name)])
    if way == "file":
        file = SimpleUploadedFile(name, (FIXTURES / name).read_bytes())
        return cora.post("/api/v1/scans/", {"study": "munich", "file": file}, format="multipart")
    path = study_folder(import_root, "fixture", [name]) / name
    return cora.post("/api/v1/scans/", {"study": "munich", "path": str(path)})


@pytest.mark.parametrize("name", GOOD)
@pytest.mark.parametrize("way", WAYS)
def test_every_good_fixture_is_registered_and_viewable(name, way, cora, annotator, import_root):
    response = send_fixture(way, cora, import_root, name)
    assert response.status_code == 201, response.content
    scan = Scan.objects.get()
    assert scan.original_name == name and scan.companions == []
    assert_viewable(cora, scan.pk, annotator)
    again = register(cora, [upload(cora, (FIXTURES / name).read_bytes(), name)])
    assert again.status_code == 200 and again.json()["id"] == scan.pk


@pytest.mark.parametrize(("name", "reason"), BAD.items())
@pytest.mark.parametrize("way", WAYS)
def test_every_bad_fixture_is_refused_leaving_nothing(name, reason, way, cora, import_root):
    response = send_fixture(way, cora, import_root, name)
    assert name in str(response.json())
    assert_nothing_left(reason, response)


# The DICOM series, as a zip, a folder and a server path


def assert_dicom_series(cora, annotator, response) -> Scan:
    assert response.status_code == 201, response.content
    scan = Scan.objects.get()
    assert scan.vendor == "dicom" and scan.original_name == "boxes_0.dcm"
    assert scan.companions == ["boxes_1.dcm"]
    assert scan.size_bytes == sum((FIXTURES / name).stat().st_size for name in DICOM)
    folder = Path(scan.file.path).parent
    assert sorted(path.name for path in folder.iterdir()) == DICOM
    assert_viewable(cora, scan.pk, annotator)
    return scan


def test_a_dicom_series_as_a_zip_upload(cora, annotator):
    scan = assert_dicom_series(
        cora, annotator, register(cora, [upload(cora, dicom_zip(), "s.zip")])
    )
    # The same files, however they come, are the same scan.
    file = SimpleUploadedFile("again.zip", dicom_zip(prefix="elsewhere/"))
    again = cora.post("/api/v1/scans/", {"study": "munich", "file": file}, format="multipart")
    assert again.status_code == 200 and again.json()["id"] == scan.pk


def test_a_dicom_series_as_a_folder_upload(cora, annotator):
    ids = [
        upload(cora, (FIXTURES / name).read_bytes(), name, relative_path=f"boxes/{name}")
        for name in DICOM
    ]
    assert_dicom_series(cora, annotator, register(cora, ids))
    assert ScanUpload.objects.count() == 0 and list(upload_dir().iterdir()) == []


@pytest.mark.parametrize("named", DICOM)
def test_a_dicom_series_by_server_path_to_any_of_its_files(named, cora, annotator, import_root):
    folder = study_folder(import_root, "dicom", DICOM)
    response = cora.post("/api/v1/scans/", {"study": "munich", "path": str(folder / named)})
    scan = Scan.objects.get()
    assert response.status_code == 201 and scan.original_name == named
    assert scan.companions == [name for name in DICOM if name != named]
    assert_viewable(cora, scan.pk, annotator)


def test_add_scans_takes_a_dicom_series(study, import_root, capsys):
    folder = study_folder(import_root, "command", DICOM)
    call_command("add_scans", str(folder / "boxes_1.dcm"), "--study", "munich")
    assert "added" in capsys.readouterr().out
    assert Scan.objects.get().companions == ["boxes_0.dcm"]


def test_a_series_in_remote_storage_is_cached_with_its_companions(
    cora, annotator, settings, tmp_path
):
    settings.STORAGES = {
        **settings.STORAGES,
        # Like S3: the bytes are not in a local file, so OpenSlide reads a cached copy.
        "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    }
    settings.SCAN_CACHE_DIR = tmp_path / "cache"
    response = register(cora, [upload(cora, dicom_zip(), "s.zip")])
    assert response.status_code == 201, response.content
    scan = Scan.objects.get()
    assert_viewable(cora, scan.pk, annotator, patch=False)
    cached = settings.SCAN_CACHE_DIR / scan.sha256
    assert sorted(path.name for path in cached.iterdir()) == DICOM


# Zip files and folders that hold no single slide


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ({"readme.txt": b"hi", "notes.csv": b"a,b"}, "no slide file in it (found notes.csv"),
        (
            {"a.svs": (FIXTURES / "small.svs").read_bytes(), "b.png": b"x"},
            "2 slides in one scan (a.svs, b.png)",
        ),
        ({"../../evil.svs": b"x"}, "points outside the archive"),
        ({"/abs/evil.svs": b"x"}, "points outside the archive"),
        ({"a.svs": b"x", "a.svs/b.svs": b"y"}, "cannot be unpacked"),
    ],
)
def test_a_zip_without_exactly_one_slide_is_refused(entries, reason, cora):
    response = register(cora, [upload(cora, zip_of(entries), "scan.zip")])
    assert "scan.zip" in str(response.json())
    assert_nothing_left(reason, response)


def test_a_zip_over_its_bounds_is_refused(cora, settings):
    settings.SCAN_ZIP_MAX_ENTRIES = 3
    many = zip_of({f"f{i}.txt": b"x" for i in range(4)})
    assert_nothing_left("SCAN_ZIP_MAX_ENTRIES", register(cora, [upload(cora, many, "m.zip")]))
    settings.SCAN_ZIP_MAX_BYTES = 1000
    bomb = zip_of({"bomb.svs": b"\0" * 100_000})
    assert len(bomb) < 1000
    assert_nothing_left("SCAN_ZIP_MAX_BYTES", register(cora, [upload(cora, bomb, "b.zip")]))


def test_not_a_zip_is_named(cora):
    response = register(cora, [upload(cora, b"PK\x03\x04 broken", "broken.zip")])
    assert_nothing_left("broken.zip: not a readable zip archive", response)


# MIRAX: which files go with the .mrxs (no MIRAX fixture exists, so OpenSlide is not asked)


def mirax_layout(root: Path) -> Path:
    (root / "slide" / "sub").mkdir(parents=True)
    (root / "slide.mrxs").write_bytes(b"mrxs")
    for name in ("Slidedat.ini", "Index.dat", "Data0000.dat", "sub/Data0001.dat"):
        (root / "slide" / name).write_bytes(name.encode())
    (root / "other.txt").write_text("not part of it")
    return root / "slide.mrxs"


def test_a_mirax_slide_takes_its_folder_of_the_same_stem(tmp_path):
    files = slide_files(mirax_layout(tmp_path))
    assert files.companions == [
        "slide/Data0000.dat",
        "slide/Index.dat",
        "slide/Slidedat.ini",
        "slide/sub/Data0001.dat",
    ]
    assert find_slide(tmp_path, "the folder") == tmp_path / "slide.mrxs"


def test_a_mirax_slide_without_its_folder_is_refused(tmp_path, cora):
    (tmp_path / "lone.mrxs").write_bytes(b"mrxs")
    with pytest.raises(ScanError, match="needs its folder lone/"):
        slide_files(tmp_path / "lone.mrxs")
    response = register(cora, [upload(cora, b"mrxs", "lone.mrxs")])
    assert_nothing_left("needs its folder lone/", response)


def test_a_browser_session_must_send_its_csrf_token(coordinator):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(coordinator)
    assert browser.get("/").status_code == 200  # sets the csrftoken cookie, as the page does
    token = browser.cookies[settings.CSRF_COOKIE_NAME].value
    assert create(browser, 10, "a.svs").status_code == 403
    response = browser.post(
        "/api/v1/uploads/",
        HTTP_UPLOAD_LENGTH="10",
        HTTP_UPLOAD_METADATA=tus_metadata(filename="a.svs", study="munich"),
        HTTP_X_CSRFTOKEN=token,
        **TUS,
    )
    assert response.status_code == 201
    location = response["Location"]
    assert send(browser, location, b"x" * 10, 0).status_code == 403
    assert send(browser, location, b"x" * 10, 0, HTTP_X_CSRFTOKEN=token).status_code == 204


@pytest.mark.django_db(transaction=True)
def test_a_patch_while_another_writes_the_upload_is_told_to_retry(cora):
    """Another request holds the upload (its row locked, as a PATCH in flight does): a second
    PATCH is answered 409 at once rather than writing between its bytes."""
    location = create(cora, 20, "a.svs")["Location"]
    upload_id = location.rstrip("/").rsplit("/", 1)[1]
    locked, release = threading.Event(), threading.Event()

    def writer():
        try:
            with transaction.atomic():
                ScanUpload.objects.select_for_update().get(pk=upload_id)
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert locked.wait(30)
        busy = send(cora, location, b"x" * 10, 0)
        assert busy.status_code == 409 and "another request" in busy.json()["detail"]
    finally:
        release.set()
        thread.join(30)
    assert send(cora, location, b"x" * 10, 0).status_code == 204
    assert cora.head(location, **TUS)["Upload-Offset"] == "10"


def test_a_zip_by_server_path_and_by_the_command(cora, import_root, capsys):
    folder = import_root / "munich" / f"zips-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / "series.zip").write_bytes(dicom_zip())
    response = cora.post("/api/v1/scans/", {"study": "munich", "path": str(folder / "series.zip")})
    assert response.status_code == 201, response.content
    assert Scan.objects.get().companions == ["boxes_1.dcm"]
    call_command("add_scans", str(folder / "series.zip"), "--study", "munich")
    assert "already registered" in capsys.readouterr().out
