"""The demo study that `make run` seeds: shipped taxonomies, three synthetic scans, one user per
role, a blinded rater, and a gold round in which an examiner (who cannot log in) labelled every
planted cell, so that a coordinator can try a blinded round and the agreement report at once.
Safe to run again: everything is looked up before it is made."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from .annotation import gold_round_for, set_label
from .models import Cell, Membership, Study
from .rounds import examiner
from .scans import ingest_scan
from .synthetic import make_synthetic_scans
from .taxonomy import latest_version, load_shipped_taxonomies

DEMO_STUDY = "demo-aml"
DEMO_ROLES = {
    "admin": Membership.Role.ADMIN,
    "coordinator": Membership.Role.COORDINATOR,
    "annotator": Membership.Role.ANNOTATOR,
    "datascientist": Membership.Role.DATA_SCIENTIST,
    "rater": Membership.Role.ANNOTATOR,  # for blinded rounds: labels nothing with the scan in view
}
DEMO_EXAMINER = "examiner"
DEMO_PATIENTS = [("DEMO-AML-01", "AML"), ("DEMO-AML-02", "AML"), ("DEMO-CTRL-01", "control")]


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    role: str


def seed_demo(
    *,
    scan_count: int = 3,
    scan_size: int = 20000,
    cells: int = 100,
    seed: int = 2019,
    logins_file: Path | None = None,
) -> tuple[Study, list[DemoLogin]]:
    """Make (or find) the demo study and return it with the demo logins."""
    load_shipped_taxonomies()
    taxonomy = latest_version("aml-18")
    study, _ = Study.objects.get_or_create(
        name=DEMO_STUDY,
        defaults={
            "title": "Demo: AML peripheral blood smears",
            "description": "Three synthetic smear scans to try the annotation screens on.",
            "taxonomy": taxonomy,
        },
    )
    logins = _ensure_users(study, logins_file or Path(settings.VAR_DIR) / "demo-logins.json")
    scan_dir = Path(settings.VAR_DIR) / "synthetic"
    manifests = make_synthetic_scans(
        scan_dir, count=scan_count, cells=cells, seed=seed, width=scan_size, height=scan_size
    )
    admin = get_user_model().objects.get(username="admin")
    scans = []
    for index, manifest in enumerate(manifests):
        code, cohort = DEMO_PATIENTS[index % len(DEMO_PATIENTS)]
        result = ingest_scan(
            scan_dir / manifest["file"], study=study, patient_code=code, cohort=cohort, user=admin
        )
        scans.append((result.scan, manifest))
    _seed_gold_round(study, scans)
    return study, logins


@transaction.atomic
def _seed_gold_round(study: Study, scans) -> None:
    """The examiner's gold labels of every planted cell (once: a labelled round is kept)."""
    rater = examiner(study, DEMO_EXAMINER, "Gold examiner")
    gold = gold_round_for(study, rater)
    if gold.labels.exists():
        return
    for scan, manifest in scans:
        for spot in manifest["cells"]:
            cell = Cell.objects.create(
                study=study, scan=scan, x=spot["x"], y=spot["y"], created_by=rater
            )
            set_label(cell, gold, rater, node=spot["code"], seconds_spent=4.0)


@transaction.atomic
def _ensure_users(study: Study, logins_file: Path) -> list[DemoLogin]:
    """One user per role; passwords are random, made once and kept in the var folder."""
    saved = json.loads(logins_file.read_text()) if logins_file.exists() else {}
    User = get_user_model()
    logins = []
    for username, role in DEMO_ROLES.items():
        user, created = User.objects.get_or_create(username=username)
        password = saved.get(username)
        if created or not password or not user.check_password(password):
            password = secrets.token_urlsafe(9)
            user.set_password(password)
        if role == Membership.Role.ADMIN:
            user.is_staff = user.is_superuser = True
        user.save()
        Membership.objects.get_or_create(study=study, user=user, role=role)
        logins.append(DemoLogin(username, password, role))
    logins_file.parent.mkdir(parents=True, exist_ok=True)
    logins_file.write_text(
        json.dumps({login.username: login.password for login in logins}, indent=2)
    )
    logins_file.chmod(0o600)
    return logins
