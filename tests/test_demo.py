"""`seed_demo`, which `make run` calls: a study, synthetic scans, one login per role; rerunnable."""

import json
import shutil
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

from annotator.models import Cell, Label, Membership, Round, Scan, Study


@pytest.fixture
def demo_var(settings, import_root):
    folder = import_root / "demo-var"
    shutil.rmtree(folder, ignore_errors=True)
    settings.VAR_DIR = folder
    return folder


def test_seed_demo_makes_a_usable_study_and_a_second_run_reuses_it(db, demo_var):
    out = StringIO()
    call_command("seed_demo", scans=2, size=2048, cells=18, stdout=out)
    study = Study.objects.get(name="demo-aml")
    assert study.taxonomy.name == "aml-18"
    assert study.scans.count() == 2
    assert {(s.width, s.height) for s in Scan.objects.all()} == {(2048, 2048)}
    roles = dict(Membership.objects.filter(study=study).values_list("user__username", "role"))
    assert roles == {
        "admin": "admin",
        "coordinator": "coordinator",
        "annotator": "annotator",
        "datascientist": "data_scientist",
        "rater": "annotator",
        "examiner": "annotator",
    }
    gold = Round.objects.get(study=study, rater__username="examiner", kind="gold")
    assert gold.labels.count() == Cell.objects.filter(study=study).count() == 2 * 18
    assert not get_user_model().objects.get(username="examiner").has_usable_password()
    logins = json.loads((demo_var / "demo-logins.json").read_text())
    for username, password in logins.items():
        assert f"{username}" in out.getvalue() and password in out.getvalue()
        assert authenticate(username=username, password=password) is not None

    again = StringIO()
    call_command("seed_demo", scans=2, size=2048, cells=18, stdout=again)
    assert Scan.objects.count() == 2 and Study.objects.count() == 1
    assert Label.objects.count() == 2 * 18
    assert json.loads((demo_var / "demo-logins.json").read_text()) == logins
    assert all(password in again.getvalue() for password in logins.values())
