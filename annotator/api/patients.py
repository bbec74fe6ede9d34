"""A study's patients with their confirmed diagnoses: list (overseeing roles), set one, import a
CSV (coordinators and admins). The rules live in annotator.diagnoses."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.fields import validated
from core.api.scoping import ScopedModelSerializer, ScopedSerializer

from .. import diagnoses
from ..models import Patient


class PatientDiagnosisSerializer(ScopedModelSerializer):
    diagnosis_set_by = serializers.CharField(
        source="diagnosis_set_by.username", default=None, read_only=True
    )

    class Meta:
        model = Patient
        fields = ["code", "cohort", "diagnosis_code", "diagnosis", "diagnosis_set_by"]
        fields += ["diagnosis_set_at"]
        read_only_fields = fields


class DiagnosisWriteSerializer(ScopedSerializer):
    code = serializers.CharField(
        allow_blank=True,
        max_length=200,
        help_text="Short code (AML, ALL, control); blank: unknown.",
    )
    diagnosis = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=diagnoses.DIAGNOSIS_LENGTH
    )


class DiagnosisImportSerializer(ScopedSerializer):
    file = serializers.FileField(help_text="CSV with the header patient,code,diagnosis.")


class ImportResultSerializer(ScopedSerializer):
    rows = serializers.IntegerField()
    changed = serializers.IntegerField()
    unchanged = serializers.IntegerField()


def _listed(study) -> list[dict]:
    patients = diagnoses.study_patients(study).select_related("diagnosis_set_by")
    return PatientDiagnosisSerializer(patients, many=True).data


class StudyPatientsView(APIView):
    """The study's patients (of its scans and patch-only cells) with their confirmed
    diagnoses, for its coordinators, data scientists and admins."""

    @extend_schema(
        summary="List a study's patients with diagnoses",
        responses=PatientDiagnosisSerializer(many=True),
    )
    def get(self, request, study_id: int):
        study = diagnoses.diagnosis_study(request.user, pk=study_id)
        return Response(_listed(study))


class PatientDiagnosisView(APIView):
    """Set (or with a blank code clear) one patient's confirmed diagnosis (coordinators, admins).
    JSON only: the browsable API's page would echo the patient code of the address to anyone
    who typed it, a blinded rater included."""

    renderer_classes = [JSONRenderer]

    @extend_schema(
        summary="Set a patient's confirmed diagnosis",
        request=DiagnosisWriteSerializer,
        responses=PatientDiagnosisSerializer,
    )
    def put(self, request, study_id: int, patient_code: str):
        study = diagnoses.diagnosis_study(request.user, "set diagnoses", pk=study_id)
        data = validated(DiagnosisWriteSerializer, request, request.data)
        patient = diagnoses.set_diagnosis(
            study, patient_code, request.user, data["code"], data["diagnosis"]
        )
        return Response(PatientDiagnosisSerializer(patient).data)


class DiagnosisImportView(APIView):
    """Import a CSV `patient,code,diagnosis` (multipart field `file`): all rows or none."""

    @extend_schema(
        summary="Import patients' diagnoses from CSV",
        request={"multipart/form-data": DiagnosisImportSerializer},
        responses=ImportResultSerializer,
    )
    def post(self, request, study_id: int):
        study = diagnoses.diagnosis_study(request.user, "set diagnoses", pk=study_id)
        upload = request.data.get("file") if hasattr(request.data, "get") else None
        if upload is None or not hasattr(upload, "read"):
            raise ValidationError({"file": ["Send the CSV as the multipart field `file`."]})
        result = diagnoses.import_diagnoses(
            study, upload.read(), request.user, name=upload.name or "diagnoses"
        )
        return Response(result.to_dict())
