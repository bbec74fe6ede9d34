"""Confirmed diagnoses of a study's patients: set by a coordinator, imported from CSV (all rows
or none, named by line), read by the overseeing roles only, through the domain, the command,
the API and the study's patients page."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from annotator import diagnoses
from annotator.models import Cell, Membership, Patient, Round
from core.errors import DomainError, ForbiddenError, NotFoundError

from .conftest import add_member
from .factories import PatientFactory

HEADER = "patient,code,diagnosis\n"


@pytest.fixture
def patients(study):
    """Three patients with a patch-only cell each in the study, and one of another study."""
    made = [PatientFactory(code=f"BM-{n}") for n in (1, 2, 3)]
    for patient in made:
        Cell.objects.create(study=study, patient=patient, external_id=f"cell-{patient.code}")
    PatientFactory(code="ELSEWHERE-1")
    return made


def _stored() -> dict[str, tuple[str, str]]:
    return {p.code: (p.diagnosis_code, p.diagnosis) for p in Patient.objects.all()}


def test_the_study_patients_are_those_of_its_scans_and_cells(study, scan, patients):
    codes = list(diagnoses.study_patients(study).values_list("code", flat=True))
    assert codes == ["BM-1", "BM-2", "BM-3", "P-001"]


def test_a_coordinator_sets_and_clears_a_diagnosis_and_who_and_when_are_kept(
    study, patients, coordinator
):
    patient = diagnoses.set_diagnosis(study, "BM-1", coordinator, " ALL ", "B-cell ALL")
    assert (patient.diagnosis_code, patient.diagnosis) == ("ALL", "B-cell ALL")
    assert patient.diagnosis_set_by == coordinator and patient.diagnosis_set_at is not None
    first_set = patient.diagnosis_set_at
    again = diagnoses.set_diagnosis(study, "BM-1", coordinator, "ALL", "B-cell ALL")
    assert again.diagnosis_set_at == first_set, "an unchanged diagnosis is not written again"
    cleared = diagnoses.set_diagnosis(study, "BM-1", coordinator, "", "")
    assert cleared.diagnosis_code == "" and Patient.objects.get(code="BM-1").diagnosis == ""


def test_setting_refuses_other_roles_other_studies_patients_and_bad_codes(
    study, patients, coordinator, data_scientist, annotator
):
    for user in (data_scientist, annotator):
        with pytest.raises(ForbiddenError, match="coordinator"):
            diagnoses.set_diagnosis(study, "BM-1", user, "AML")
    with pytest.raises(NotFoundError, match="no patient 'ELSEWHERE-1'"):
        diagnoses.set_diagnosis(study, "ELSEWHERE-1", coordinator, "AML")
    with pytest.raises(DomainError, match="letters, digits"):
        diagnoses.set_diagnosis(study, "BM-1", coordinator, "A M L")
    with pytest.raises(DomainError, match="code with the diagnosis text"):
        diagnoses.set_diagnosis(study, "BM-1", coordinator, "", "leukaemia")
    assert Patient.objects.get(code="BM-1").diagnosis_code == ""


def test_an_import_sets_every_row_and_a_second_run_changes_nothing(study, patients, coordinator):
    text = HEADER + 'BM-1,ALL,"B-ALL, common"\nBM-2,AML,AML M2\r\n\nBM-3,control,\n'
    result = diagnoses.import_diagnoses(study, text.encode(), coordinator)
    assert result.to_dict() == {"rows": 3, "changed": 3, "unchanged": 0}
    assert _stored()["BM-1"] == ("ALL", "B-ALL, common")
    assert _stored()["BM-3"] == ("control", "")
    stamps = dict(Patient.objects.values_list("code", "diagnosis_set_at"))
    again = diagnoses.import_diagnoses(study, text.encode(), coordinator)
    assert again.to_dict() == {"rows": 3, "changed": 0, "unchanged": 3}
    assert not again.changed_anything
    assert dict(Patient.objects.values_list("code", "diagnosis_set_at")) == stamps


def test_a_bad_file_names_every_problem_by_line_and_writes_nothing(study, patients, coordinator):
    diagnoses.set_diagnosis(study, "BM-3", coordinator, "AML", "kept")
    before = _stored()
    text = HEADER + "BM-1,ALL,ok\nNOBODY,AML,x\nBM-2,,empty code\nBM-1,AML,twice\nBM-3,AML\n"
    with pytest.raises(DomainError) as refused:
        diagnoses.import_diagnoses(study, text.encode(), coordinator, name="dx.csv")
    message = str(refused.value)
    assert message.startswith("dx.csv: nothing was imported")
    assert "line 3: study munich has no patient 'NOBODY'" in message
    assert "line 4: patient 'BM-2' has an empty diagnosis code" in message
    assert "line 5: patient 'BM-1' again (first on line 2)" in message
    assert "line 6: 2 fields, not 3" in message
    assert message.index("line 3") < message.index("line 4") < message.index("line 6")
    assert _stored() == before


def test_a_wrong_header_is_refused_on_line_one(study, patients, coordinator):
    with pytest.raises(DomainError, match=r"line 1: the header must be patient,code,diagnosis"):
        diagnoses.import_diagnoses(study, b"code,patient,diagnosis\nBM-1,ALL,x\n", coordinator)
    with pytest.raises(DomainError, match="line 3: a NUL character"):
        diagnoses.import_diagnoses(
            study, (HEADER + "BM-1,ALL,x\nBM-2,\x00,x\n").encode(), coordinator
        )
    with pytest.raises(DomainError, match="not UTF-8"):
        diagnoses.import_diagnoses(study, HEADER.encode() + b"BM-1,\xff,x\n", coordinator)


def test_the_command_imports_and_refuses_naming_the_line(study, patients, tmp_path):
    path = tmp_path / "dx.csv"
    path.write_text(HEADER + "BM-1,ALL,B-ALL\nBM-2,AML,\n")
    out = io.StringIO()
    call_command("import_diagnoses", str(path), "--study", "munich", stdout=out)
    assert "2 rows: 2 diagnoses set, 0 unchanged" in out.getvalue()
    assert "changed in" in out.getvalue()
    out = io.StringIO()
    call_command("import_diagnoses", str(path), "--study", "munich", stdout=out)
    assert "nothing changed" in out.getvalue()
    path.write_text(HEADER + "BM-9,ALL,\n")
    with pytest.raises(CommandError, match=r"line 2: study munich has no patient 'BM-9'"):
        call_command("import_diagnoses", str(path), "--study", "munich")
    with pytest.raises(CommandError, match="No study named 'nope'"):
        call_command("import_diagnoses", str(path), "--study", "nope")


def test_the_api_lists_for_overseers_and_lets_coordinators_write(
    study, patients, coordinator, data_scientist, api_as
):
    diagnoses.set_diagnosis(study, "BM-2", coordinator, "AML", "AML with maturation")
    listed = api_as(data_scientist).get(f"/api/v1/studies/{study.pk}/patients/")
    assert listed.status_code == 200
    by_code = {row["code"]: row for row in listed.json()}
    assert by_code["BM-2"]["diagnosis"] == "AML with maturation"
    assert by_code["BM-2"]["diagnosis_set_by"] == "cora"
    assert set(by_code) == {"BM-1", "BM-2", "BM-3"}
    url = f"/api/v1/studies/{study.pk}/patients/BM-1/diagnosis/"
    refused = api_as(data_scientist).put(url, {"code": "ALL"}, format="json")
    assert refused.status_code == 403 and "coordinator" in refused.json()["detail"]
    done = api_as(coordinator).put(url, {"code": "ALL", "diagnosis": "T-ALL"}, format="json")
    assert done.status_code == 200 and done.json()["diagnosis_code"] == "ALL"
    bad = api_as(coordinator).put(url, {"code": "no spaces"}, format="json")
    assert bad.status_code == 400 and "letters, digits" in bad.json()["code"][0]
    missing = api_as(coordinator).put(
        f"/api/v1/studies/{study.pk}/patients/ELSEWHERE-1/diagnosis/", {"code": "AML"}
    )
    assert missing.status_code == 404


def test_the_api_imports_a_csv_upload_all_or_nothing(study, patients, coordinator, api_as):
    url = f"/api/v1/studies/{study.pk}/patients/import/"
    good = io.BytesIO((HEADER + "BM-1,ALL,x\nBM-2,AML,y\n").encode())
    good.name = "dx.csv"
    response = api_as(coordinator).post(url, {"file": good}, format="multipart")
    assert response.status_code == 200, response.json()
    assert response.json() == {"rows": 2, "changed": 2, "unchanged": 0}
    bad = io.BytesIO((HEADER + "BM-3,AML,z\nBM-7,AML,\n").encode())
    bad.name = "bad.csv"
    refused = api_as(coordinator).post(url, {"file": bad}, format="multipart")
    assert refused.status_code == 400
    assert "line 3: study munich has no patient 'BM-7'" in refused.json()["file"][0]
    assert Patient.objects.get(code="BM-3").diagnosis_code == ""
    empty = api_as(coordinator).post(url, {}, format="multipart")
    assert empty.status_code == 400 and "file" in empty.json()


def test_annotators_outsiders_and_blinded_raters_get_no_diagnosis(
    study, patients, coordinator, annotator, outsider, api_as
):
    diagnoses.set_diagnosis(study, "BM-1", coordinator, "ALL", "distinctive-dx-text")
    url = f"/api/v1/studies/{study.pk}/patients/"
    answer = api_as(annotator).get(url)
    assert answer.status_code == 403 and b"distinctive" not in answer.content
    assert api_as(outsider).get(url).status_code == 404
    # A coordinator who also rates a blinded round in the study sees it as a stranger would.
    rater = add_member(study, Membership.Role.COORDINATOR, "rico")
    Round.objects.create(study=study, rater=rater, kind=Round.Kind.BLINDED, name="rico-blind")
    assert api_as(rater).get(url).status_code == 404
    page = Client()
    page.force_login(rater)
    assert page.get(f"/studies/{study.name}/patients/").status_code == 404


def test_the_patients_page_sets_one_and_imports_a_file(
    study, patients, coordinator, data_scientist
):
    browser = Client()
    browser.force_login(coordinator)
    page = browser.get(f"/studies/{study.name}/patients/")
    assert page.status_code == 200
    assert b"BM-1" in page.content and b'name="file"' in page.content
    sent = browser.post(
        f"/studies/{study.name}/patients/",
        {"action": "set", "patient": "BM-2", "code": "AML", "diagnosis": "AML M4"},
        follow=True,
    )
    assert b"BM-2: AML" in sent.content
    assert _stored()["BM-2"] == ("AML", "AML M4")
    upload = io.BytesIO((HEADER + "BM-1,ALL,B-ALL\n").encode())
    upload.name = "dx.csv"
    imported = browser.post(
        f"/studies/{study.name}/patients/", {"action": "import", "file": upload}, follow=True
    )
    assert b"1 rows: 1 diagnoses set" in imported.content
    bad = io.BytesIO(b"nope\n")
    bad.name = "bad.csv"
    refused = browser.post(
        f"/studies/{study.name}/patients/", {"action": "import", "file": bad}, follow=True
    )
    assert b"line 1: the header must be" in refused.content
    reader = Client()
    reader.force_login(data_scientist)
    read_only = reader.get(f"/studies/{study.name}/patients/")
    assert read_only.status_code == 200 and b"AML M4" in read_only.content
    assert b'name="file"' not in read_only.content
    assert (
        reader.post(
            f"/studies/{study.name}/patients/", {"action": "set", "patient": "BM-2", "code": "ALL"}
        ).status_code
        == 403
    )
    assert _stored()["BM-2"] == ("AML", "AML M4")
