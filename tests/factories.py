"""factory_boy factories for the models tests build by hand."""

import factory
from django.contrib.auth import get_user_model

from annotator.models import Patient, Study


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pass-word-123")


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    code = factory.Sequence(lambda n: f"P-{n:04d}")
    cohort = "AML"


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Study
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"study-{n}")
    title = factory.LazyAttribute(lambda study: f"Study {study.name}")
