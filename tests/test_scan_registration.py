"""Registering scans, tried from the attacker's side.

Study munich holds scan smear_0 of patient P-001. Bea coordinates study bern only; Rita rates a
blinded round in munich and coordinates a study of her own, cologne. Both try to pull munich's
scan into their study: by server path (from the shared import root, and as a copy placed in
their study's own import folder) and by uploading its bytes. Nothing may be attached, no answer
may name munich, P-001, the scan's id or its checksum, and its tiles stay unreadable to them.
"""

from __future__ import annotations

import json
import shutil

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotator import annotation, rounds
from annotator.models import Membership, Scan
from annotator.scans import ScanError, ingest_scan

from .conftest import client_for
from .factories import StudyFactory, UserFactory


@pytest.fixture
def bern(aml_taxonomy):
    return StudyFactory(name="bern", taxonomy=aml_taxonomy)


@pytest.fixture
def bea(bern):
    """A coordinator of another study only."""
    user = UserFactory(username="bea")
    Membership.objects.create(study=bern, user=user, role=Membership.Role.COORDINATOR)
    return user


@pytest.fixture
def rita_with_two_hats(study, scan, annotator, rater, coordinator, aml_taxonomy):
    """Rita rates a blinded round in munich and coordinates cologne."""
    gold = annotation.gold_round_for(study, annotator)
    for x in (500, 900):
        cell = annotation.create_cell(study, scan, x, 700, annotator)
        annotation.set_label(cell, gold, annotator, node="NGS")
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    cologne = StudyFactory(name="cologne", taxonomy=aml_taxonomy)
    Membership.objects.create(study=cologne, user=rater, role=Membership.Role.COORDINATOR)
    return rater


def copy_into_study_folder(import_root, study_name: str, source) -> str:
    folder = import_root / study_name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "found-on-disk.tiff"
    shutil.copy(source, target)
    return str(target)


def assert_reveals_nothing(response, scan: Scan) -> None:
    text = json.dumps(response.json())
    for secret in ("munich", "P-001", scan.sha256, scan.sha256[:12], f"scan {scan.pk}"):
        assert secret not in text, (secret, text)


def assert_not_reachable(user, scan: Scan, study_name: str) -> None:
    assert list(scan.studies.values_list("name", flat=True)) == ["munich"]
    client = APIClient()
    client.force_login(user)  # the image endpoints take sessions and tokens, as the viewer sends
    assert client.get(f"/api/v1/scans/{scan.pk}/tiles/scan.dzi").status_code == 404
    assert client.get(f"/api/v1/scans/{scan.pk}/tiles/scan_files/0/0_0.jpeg").status_code == 404
    assert client.get(f"/api/v1/scans/?study={study_name}").json()["results"] == []


def post_path(user, study_name: str, path: str, **extra):
    body = {"study": study_name, "path": path, **extra}
    return client_for(user).post("/api/v1/scans/", body, format="json")


def post_upload(user, study_name: str, source, name="mine.tiff", **extra):
    upload = SimpleUploadedFile(name, source.read_bytes())
    body = {"study": study_name, "file": upload, **extra}
    return client_for(user).post("/api/v1/scans/", body, format="multipart")


def test_a_coordinator_names_no_file_outside_her_studys_import_folder(
    bea, scan, synthetic_scan_files
):
    shared = str(synthetic_scan_files[0][0])
    response = post_path(bea, "bern", shared)
    assert response.status_code == 400
    message = response.json()["path"][0]
    assert "outside the import roots" in message and "/bern" in message
    assert_reveals_nothing(response, scan)
    assert_not_reachable(bea, scan, "bern")


def test_another_studys_file_in_her_own_folder_is_refused_and_reveals_nothing(
    bea, scan, synthetic_scan_files, import_root
):
    path = copy_into_study_folder(import_root, "bern", synthetic_scan_files[0][0])
    response = post_path(bea, "bern", path, patient="P-777")
    assert response.status_code == 400
    assert "already registered and you may not see it" in response.json()["path"][0]
    assert_reveals_nothing(response, scan)
    assert_not_reachable(bea, scan, "bern")


def test_uploading_the_bytes_of_another_studys_scan_attaches_nothing(
    bea, scan, synthetic_scan_files
):
    response = post_upload(bea, "bern", synthetic_scan_files[0][0], patient="P-777")
    assert response.status_code == 400
    assert "already registered and you may not see it" in response.json()["file"][0]
    assert_reveals_nothing(response, scan)
    assert_not_reachable(bea, scan, "bern")
    assert Scan.objects.count() == 1


def test_a_blinded_rater_coordinating_another_study_cannot_pull_in_the_scans_she_rates(
    rita_with_two_hats, scan, synthetic_scan_files, import_root
):
    rita = rita_with_two_hats
    source = synthetic_scan_files[0][0]
    answers = [
        post_path(rita, "cologne", str(source)),
        post_path(rita, "cologne", copy_into_study_folder(import_root, "cologne", source)),
        post_upload(rita, "cologne", source),
    ]
    for response in answers:
        assert response.status_code == 400, response.json()
        assert_reveals_nothing(response, scan)
    assert_not_reachable(rita, scan, "cologne")


def test_a_coordinator_who_sees_the_scan_may_add_it_to_her_other_study(
    bern, coordinator, scan, synthetic_scan_files, import_root
):
    Membership.objects.create(study=bern, user=coordinator, role=Membership.Role.COORDINATOR)
    path = copy_into_study_folder(import_root, "bern", synthetic_scan_files[0][0])
    response = post_path(coordinator, "bern", path)
    assert response.status_code == 200, response.json()
    assert response.json()["id"] == scan.pk
    assert response.json()["studies"] == ["bern", "munich"]
    assert set(scan.studies.values_list("name", flat=True)) == {"bern", "munich"}


def test_a_patient_mismatch_does_not_name_the_registered_patient(
    coordinator, scan, synthetic_scan_files, import_root
):
    path = copy_into_study_folder(import_root, "munich", synthetic_scan_files[0][0])
    response = post_path(coordinator, "munich", path, patient="P-002")
    assert response.status_code == 400
    message = response.json()["patient"][0]
    assert "another patient, not P-002" in message and "P-001" not in message


def test_a_site_administrator_may_name_any_file_under_the_import_roots(
    bern, scan, synthetic_scan_files
):
    admin = UserFactory(username="root-admin", is_superuser=True, is_staff=True)
    response = post_path(admin, "bern", str(synthetic_scan_files[1][0]))
    assert response.status_code == 201, response.json()
    assert response.json()["studies"] == ["bern"]
    scan.studies.clear()  # a scan left in no study is seen by nobody but a site administrator
    again = post_path(admin, "bern", str(synthetic_scan_files[0][0]))
    assert again.status_code == 200 and again.json()["id"] == scan.pk


def test_the_domain_refuses_a_known_scan_the_user_does_not_see(
    bern, bea, scan, synthetic_scan_files
):
    """The rule lives in `ingest_scan`, so every caller that names a user gets it."""
    with pytest.raises(ScanError, match="you may not see it"):
        ingest_scan(synthetic_scan_files[0][0], study=bern, user=bea)
    assert ingest_scan(synthetic_scan_files[0][0], study=bern).scan == scan
