"""Confirmed diagnoses of a study's patients: set one by hand, or import a CSV
`patient,code,diagnosis`.

A patient belongs to a study when one of the study's scans or patch-only cells is theirs. Only
the study's coordinators and admins set diagnoses; coordinators, data scientists and admins read
them (the per-patient decision report compares the counts against them). A rater of a blinded
round never learns one: the study is looked up among those the user sees with open eyes.

An import is checked whole before anything is written (every problem named by its line) and
written in one transaction; a row that says what is stored already changes nothing, so a second
run over the same file changes nothing.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import NamedTuple

from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core.errors import DomainError, NotFoundError

from . import access
from .models import Patient, Study

HEADER = ("patient", "code", "diagnosis")
CODE_LENGTH = Patient._meta.get_field("diagnosis_code").max_length
CODE_PATTERN = re.compile(rf"^[A-Za-z0-9_.+-]{{1,{CODE_LENGTH}}}$")
DIAGNOSIS_LENGTH = 2000
# The most problems one refused import lists (the count of the rest follows them).
LISTED_PROBLEMS = 20


def study_patients(study: Study) -> QuerySet[Patient]:
    """The patients of the study's scans and of its patch-only cells, by code."""
    return Patient.objects.filter(
        Q(pk__in=study.scans.values("patient")) | Q(pk__in=study.cells.values("patient"))
    ).order_by("code")


def diagnosis_codes(study: Study) -> list[tuple[str, int]]:
    """The diagnosis codes the study's patients carry, each with how many, most common first."""
    counted = (
        study_patients(study)
        .exclude(diagnosis_code="")
        .order_by()
        .values("diagnosis_code")
        .annotate(n=Count("pk"))
    )
    return sorted(
        ((row["diagnosis_code"], row["n"]) for row in counted), key=lambda c: (-c[1], c[0])
    )


def diagnosis_study(user, what: str = "read diagnoses", **lookup) -> Study:
    """The study (`pk=` or `name=`) for diagnosis work: NotFoundError unless the user is a
    member who rates no blinded round in it, ForbiddenError naming `what` for a member who
    does not oversee it."""
    study = (
        access.visible_studies(user)
        .exclude(pk__in=access.blinded_studies(user))
        .filter(**lookup)
        .first()
    )
    if study is None:
        shown = ", ".join(
            f"{'id' if key == 'pk' else key} {str(value)[:80]!r}" for key, value in lookup.items()
        )
        raise NotFoundError(f"No study with {shown} among yours.")
    access.require_role(user, study, access.OVERSEEING_ROLES, what)
    return study


def patient_of(study: Study, code: str) -> Patient:
    """The study's patient of that code, or NotFoundError naming it."""
    patient = study_patients(study).filter(code=code).first()
    if patient is None:
        raise NotFoundError(f"Study {study.name} has no patient {code[:64]!r}.")
    return patient


def clean_code(code: str) -> str:
    """A diagnosis code as stored: trimmed; blank means unknown; letters, digits, `_.+-`."""
    code = (code or "").strip()
    if code and not CODE_PATTERN.match(code):
        raise DomainError(
            f"Diagnosis code {code[:40]!r} must be 1 to {CODE_LENGTH} letters, digits or _.+- "
            "(e.g. AML, ALL, control).",
            "code",
        )
    return code


def clean_diagnosis(text: str) -> str:
    text = (text or "").strip()
    if len(text) > DIAGNOSIS_LENGTH:
        raise DomainError(
            f"The diagnosis text has {len(text)} characters; at most {DIAGNOSIS_LENGTH}.",
            "diagnosis",
        )
    return text


def require_manager(user, study: Study) -> None:
    """Only the study's coordinators and admins set diagnoses (ForbiddenError otherwise)."""
    if user is not None:
        access.require_role(user, study, access.MANAGING_ROLES, "set diagnoses")


def set_diagnosis(study: Study, patient_code: str, user, code: str, diagnosis: str = "") -> Patient:
    """Set (or, with a blank code and text, clear) the confirmed diagnosis of the study's
    patient; who and when are recorded only when something changes."""
    require_manager(user, study)
    code, diagnosis = clean_code(code), clean_diagnosis(diagnosis)
    if diagnosis and not code:
        raise DomainError("Give a diagnosis code with the diagnosis text.", "code")
    patient = patient_of(study, patient_code)
    if (patient.diagnosis_code, patient.diagnosis) != (code, diagnosis):
        _store(patient, code, diagnosis, user)
    return patient


def _store(patient: Patient, code: str, diagnosis: str, user) -> None:
    patient.diagnosis_code, patient.diagnosis = code, diagnosis
    patient.diagnosis_set_by = user
    patient.diagnosis_set_at = timezone.now()
    patient.save(
        update_fields=["diagnosis_code", "diagnosis", "diagnosis_set_by", "diagnosis_set_at"]
    )


@dataclass(frozen=True)
class DiagnosisImport:
    """What an import did: rows read, diagnoses changed, rows that matched what was stored."""

    rows: int
    changed: int
    unchanged: int

    @property
    def changed_anything(self) -> bool:
        return bool(self.changed)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "changed": self.changed, "unchanged": self.unchanged}


def _decoded(data: bytes, name: str) -> str:
    try:
        # utf-8-sig: a byte-order mark, as spreadsheet programs write, is not part of line 1.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DomainError(f"{name}, line {line}: not UTF-8 text; save the file as UTF-8.") from None


class DiagnosisRow(NamedTuple):
    line: int
    patient: str
    code: str
    diagnosis: str


def _checked_row(line: int, fields: list[str]) -> DiagnosisRow:
    if len(fields) != len(HEADER):
        raise DomainError(f"{len(fields)} fields, not {len(HEADER)}")
    patient, code, diagnosis = (field.strip() for field in fields)
    if not patient:
        raise DomainError("no patient code")
    if not code:
        raise DomainError(f"patient {patient[:64]!r} has an empty diagnosis code")
    return DiagnosisRow(line, patient, clean_code(code), clean_diagnosis(diagnosis))


def read_rows(data: bytes, name: str) -> tuple[list[DiagnosisRow], list[tuple[int, str]]]:
    """The rows of the file, and every problem found, by line: a bad header, a wrong field
    count, an empty or malformed code, a patient given twice, a NUL character."""
    text = _decoded(data, name)
    if "\x00" in text:
        return [], [(text.count("\n", 0, text.index("\x00")) + 1, "a NUL character")]
    reader = csv.reader(io.StringIO(text, newline=""))
    problems: list[tuple[int, str]] = []
    rows: list[DiagnosisRow] = []
    seen: dict[str, int] = {}
    try:
        header = next(reader, None)
        if header is None or tuple(field.strip().lower() for field in header) != HEADER:
            shown = ",".join(header or [])[:80]
            return [], [(1, f"the header must be {','.join(HEADER)}, not {shown!r}")]
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue
            try:
                row = _checked_row(reader.line_num, fields)
            except DomainError as exc:
                problems.append((reader.line_num, str(exc)))
                continue
            if row.patient in seen:
                first = seen[row.patient]
                problems.append(
                    (row.line, f"patient {row.patient[:64]!r} again (first on line {first})")
                )
                continue
            seen[row.patient] = row.line
            rows.append(row)
    except csv.Error as exc:
        problems.append((reader.line_num, str(exc)))
    return rows, problems


def import_diagnoses(
    study: Study, data: bytes, user=None, name: str = "diagnoses"
) -> DiagnosisImport:
    """Set the diagnoses a CSV `patient,code,diagnosis` gives for the study's patients. Any
    problem (every one named by line; unknown patients among them) refuses the whole file and
    nothing is written. `user` None is a command's import (no role check, no author)."""
    require_manager(user, study)
    rows, problems = read_rows(data, name)
    codes = [row.patient for row in rows]
    patients = {p.code: p for p in study_patients(study).filter(code__in=codes)}
    problems += [
        (row.line, f"study {study.name} has no patient {row.patient[:64]!r}")
        for row in rows
        if row.patient not in patients
    ]
    if problems:
        listed = [f"line {line}: {problem}" for line, problem in sorted(problems)]
        more = len(listed) - LISTED_PROBLEMS
        shown = "; ".join(listed[:LISTED_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        raise DomainError(f"{name}: nothing was imported: {shown}.", "file")
    changed = 0
    with transaction.atomic():
        for row in rows:
            patient = patients[row.patient]
            if (patient.diagnosis_code, patient.diagnosis) != (row.code, row.diagnosis):
                _store(patient, row.code, row.diagnosis, user)
                changed += 1
    return DiagnosisImport(rows=len(rows), changed=changed, unchanged=len(rows) - changed)


def may_set(user, study: Study) -> bool:
    """Whether the user may set the study's diagnoses (coordinator or admin)."""
    return bool(access.roles_in(user, study) & access.MANAGING_ROLES)
