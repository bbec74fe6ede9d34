"""Scan ingestion: real files through OpenSlide; refusals name the problem and leave nothing."""

import io
import os
import shutil
from io import StringIO

import pytest
from django.core.files.storage import InMemoryStorage
from django.core.management import CommandError, call_command
from django.utils._os import safe_join
from PIL import Image

from annotator.models import Patient, Scan
from annotator.scans import ScanError, ingest_scan, local_path


def stored_files(settings) -> list:
    root = settings.MEDIA_ROOT
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_synthetic_scan_is_registered_with_size_resolution_and_checksum(
    study, coordinator, synthetic_scan_files, settings
):
    path, manifest = synthetic_scan_files[0]
    result = ingest_scan(path, study=study, patient_code="P-7", cohort="AML", user=coordinator)
    scan = result.scan
    assert result.created
    assert (scan.width, scan.height) == (manifest["width"], manifest["height"])
    assert scan.kind == Scan.Kind.WHOLE_SLIDE and scan.vendor == "generic-tiff"
    assert scan.level_count > 1
    assert scan.mpp_x == pytest.approx(manifest["mpp"], rel=1e-3)
    assert scan.patient.code == "P-7" and scan.patient.cohort == "AML"
    assert study.scans.filter(pk=scan.pk).exists()
    assert local_path(scan).read_bytes() == path.read_bytes()
    import hashlib

    assert scan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_file_twice_is_recognised_by_checksum(
    study, coordinator, synthetic_scan_files, import_root, settings
):
    path, _ = synthetic_scan_files[0]
    first = ingest_scan(path, study=study, user=coordinator)
    copy = import_root / "renamed-copy.tiff"
    shutil.copy(path, copy)
    second = ingest_scan(copy, study=study, user=coordinator)
    assert not second.created and second.scan == first.scan
    assert Scan.objects.count() == 1
    assert len(stored_files(settings)) == 1


def test_same_file_claimed_for_another_patient_is_refused(study, coordinator, synthetic_scan_files):
    path, _ = synthetic_scan_files[0]
    ingest_scan(path, study=study, patient_code="P-1", user=coordinator)
    with pytest.raises(ScanError, match=r"as scan \d+ of another patient, not P-2"):
        ingest_scan(path, study=study, patient_code="P-2", user=coordinator)


def write(root, name, data: bytes):
    path = root / name
    path.write_bytes(data)
    return path


def tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 150, 160)).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("empty.tiff", lambda scans: b"", "the file is empty"),
        (
            "notes.txt",
            lambda scans: b"hello, this is not a slide\n" * 50,
            "not an image in a supported format",
        ),
        (
            "truncated.tiff",
            lambda scans: scans[0][0].read_bytes()[: scans[0][0].stat().st_size // 2],
            "truncated file",
        ),
        ("garbage.tiff", lambda scans: b"II*\x00" + bytes(range(256)) * 40, "corrupt"),
        ("cut.png", lambda scans: _png_bytes()[:-200], "truncated image"),
    ],
)
def test_bad_files_are_refused_with_the_reason_and_leave_nothing(
    study, coordinator, synthetic_scan_files, import_root, settings, name, make, message
):
    path = write(import_root, name, make(synthetic_scan_files))
    with pytest.raises(ScanError) as caught:
        ingest_scan(path, study=study, patient_code="P-9", user=coordinator)
    assert name in str(caught.value) and message in str(caught.value)
    assert Scan.objects.count() == 0
    assert not Patient.objects.filter(code="P-9").exists()
    assert stored_files(settings) == []


def _png_bytes() -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype="uint8")
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


def test_plain_photo_goes_through_openslides_image_fallback(study, coordinator, import_root):
    path = write(import_root, "field.png", _png_bytes())
    scan = ingest_scan(path, study=study, user=coordinator).scan
    assert scan.kind == Scan.Kind.PHOTO and scan.vendor == "image"
    assert (scan.width, scan.height, scan.level_count) == (300, 300, 1)
    assert scan.mpp_x is None


def test_paths_outside_the_import_roots_are_refused(
    study, coordinator, tmp_path, synthetic_scan_files, import_root
):
    outside = tmp_path / "outside.tiff"
    shutil.copy(synthetic_scan_files[0][0], outside)
    with pytest.raises(ScanError, match="outside the import roots"):
        ingest_scan(outside, study=study, user=coordinator)
    sneaky = import_root / ".." / ".." / "outside.tiff"
    with pytest.raises(ScanError, match="outside the import roots"):
        ingest_scan(sneaky, study=study, user=coordinator)
    link = import_root / "link.tiff"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    with pytest.raises(ScanError, match="outside the import roots"):
        ingest_scan(link, study=study, user=coordinator)
    assert Scan.objects.count() == 0


def test_add_scans_command_registers_and_reports_refusals(study, synthetic_scan_files, import_root):
    good = str(synthetic_scan_files[1][0])
    bad = str(write(import_root, "empty2.tiff", b""))
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="1 of 2 file"):
        call_command(
            "add_scans", good, bad, study=study.name, patient="P-3", stdout=out, stderr=err
        )
    assert "added: scan" in out.getvalue() and "3000x2400" in out.getvalue()
    assert "empty2.tiff: the file is empty" in err.getvalue()
    out = StringIO()
    call_command("add_scans", good, study=study.name, stdout=out)
    assert "already registered" in out.getvalue()
    with pytest.raises(CommandError, match="No study named 'nope'"):
        call_command("add_scans", good, study="nope")


class RemoteLikeStorage(InMemoryStorage):
    """Like S3: files can be opened but have no local path."""

    def _relative_path(self, name):
        return os.path.relpath(safe_join(self.location, name), self.location)

    def path(self, name):
        raise NotImplementedError("no local path")


def test_scans_in_remote_storage_are_read_through_a_verified_local_copy(
    study, coordinator, synthetic_scan_files, settings, tmp_path
):
    """Storage without local paths (as S3): OpenSlide gets a cached copy checked by sha256."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "tests.test_scans.RemoteLikeStorage"},
    }
    settings.SCAN_CACHE_DIR = tmp_path / "cache"
    path, _ = synthetic_scan_files[0]
    scan = ingest_scan(path, study=study, user=coordinator).scan
    copy = local_path(scan)
    assert copy.is_relative_to(tmp_path / "cache")
    assert copy.read_bytes() == path.read_bytes()
    assert [p.name for p in copy.parent.iterdir()] == [path.name]
    assert local_path(scan) == copy
