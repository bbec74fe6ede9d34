"""Smaller doors a blinded rater, or another annotator, could use: serializers whose related
fields are not scoped, the study listing, patches that match across rounds by hash, cells moved
under somebody's finished answer, somebody else's scan upload, and the browsable API in
production."""

from __future__ import annotations

import importlib
import io
import pkgutil
import re
import secrets
from datetime import timedelta

import numpy as np
from django.utils import timezone
from PIL import Image
from rest_framework import serializers
from rest_framework.test import APIClient

from annotator import annotation, rounds, uploads
from annotator.models import Cell, Membership, Round, ScanUpload
from core.api.scoping import ScopedRelationsMixin

from .conftest import client_for, tus_metadata
from .factories import UserFactory
from .test_blinding import blinded  # noqa: F401  (the fixture)
from .test_settings import PRODUCTION, run_manage


def _project_serializers() -> list[type]:
    for package in ("annotator", "datasets", "mltasks"):
        for module in pkgutil.walk_packages(
            importlib.import_module(package).__path__, f"{package}."
        ):
            if ".migrations" not in module.name and ".management" not in module.name:
                importlib.import_module(module.name)
    found, todo = [], [serializers.BaseSerializer]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.split(".")[0] in {"annotator", "datasets", "mltasks"}:
                found.append(sub)
    return found


def test_every_serializer_of_the_project_scopes_its_related_fields():
    found = _project_serializers()
    assert len(found) > 20
    unscoped = [cls.__qualname__ for cls in found if not issubclass(cls, ScopedRelationsMixin)]
    assert unscoped == []


def test_related_choices_are_what_the_user_sees(study, scan, gold_cells, annotator, outsider):
    from annotator.api.serializers import LabelWriteSerializer

    class Request:
        def __init__(self, user):
            self.user = user

    mine = LabelWriteSerializer(context={"request": Request(annotator)})
    assert set(mine.fields["cell"].queryset) == set(Cell.objects.filter(study=study))
    theirs = LabelWriteSerializer(context={"request": Request(outsider)})
    assert not theirs.fields["cell"].queryset.exists()
    assert not LabelWriteSerializer().fields["cell"].queryset.exists()  # no request: nothing


def test_the_study_listing_hides_scans_and_members_from_a_blinded_rater(
    blinded,  # noqa: F811
    rater,
    coordinator,
):
    listed = {s["name"]: s for s in client_for(rater).get("/api/v1/studies/").json()["results"]}
    assert listed["munich"]["scan_count"] is None and listed["munich"]["members"] is None
    assert listed["munich"]["my_roles"] == ["annotator"]
    seen = {s["name"]: s for s in client_for(coordinator).get("/api/v1/studies/").json()["results"]}
    assert seen["munich"]["scan_count"] == 1
    assert {"anna", "rita"} <= {m["username"] for m in seen["munich"]["members"]}
    page = client_for(rater).get("/api/v1/studies/", HTTP_ACCEPT="text/html")
    assert not re.search(rb"\b(anna|cora)\b", page.content)


def _pixels(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def _turns(pixels: np.ndarray) -> list[np.ndarray]:
    turned = [np.rot90(pixels, k) for k in range(4)]
    return turned + [t[:, ::-1] for t in turned]


def test_no_two_rounds_serve_the_same_patch_of_a_cell(
    blinded,  # noqa: F811
    rater,
    annotator,
    coordinator,
):
    original, repeat = blinded["rita"], blinded["repeat"]
    past = timezone.now() - timedelta(days=1)
    Round.objects.filter(pk=repeat.pk).update(not_before=past - timedelta(days=1))
    second = rounds.schedule_repeat(original, coordinator, not_before=past, seed=9)
    rita = APIClient()
    rita.force_login(rater)

    def served(round_):
        return {
            item.cell_id: rita.get(f"/api/v1/queue/items/{item.token}/patch.png").content
            for item in round_.items.all()
        }

    Round.objects.filter(pk=repeat.pk).update(not_before=timezone.now() + timedelta(days=1))
    Round.objects.filter(pk=second.pk).update(not_before=timezone.now() + timedelta(days=2))
    first = served(original)
    Round.objects.filter(pk=repeat.pk).update(not_before=past)
    again = served(repeat)
    Round.objects.filter(pk=second.pk).update(not_before=past + timedelta(hours=1))
    third = served(second)
    ordinary = APIClient()
    ordinary.force_login(annotator)  # the image endpoints read sessions and tokens
    assert first and first.keys() == again.keys() == third.keys()
    for cell, data in first.items():
        plain = ordinary.get(f"/api/v1/cells/{cell}/patch.png")
        assert plain.status_code == 200
        versions = [b"".join(plain.streaming_content), data, again[cell], third[cell]]
        assert len(set(versions)) == 4, f"cell {cell}: two rounds serve the same bytes"
        decoded = [_pixels(v) for v in versions]
        for i, left in enumerate(decoded):
            for right in decoded[i + 1 :]:
                assert not any(np.array_equal(left, turn) for turn in _turns(right)), (
                    f"cell {cell}: two versions have the same pixels up to a turn"
                )
        # What the rater sees is the same cell: the stored patch, turned, within one grey level.
        closest = min(
            np.abs(turn.astype(int) - decoded[0].astype(int)).max() for turn in _turns(decoded[1])
        )
        assert closest <= 1
    token = original.items.first().token
    Round.objects.filter(pk__in=[repeat.pk, second.pk]).update(
        not_before=timezone.now() + timedelta(days=3)
    )
    same = rita.get(f"/api/v1/queue/items/{token}/patch.png").content
    assert same == rita.get(f"/api/v1/queue/items/{token}/patch.png").content  # stable per item


def _move(user, cell: Cell, dx: int):
    """The user drags the cell's marker `dx` pixels to the right, through the API."""
    return client_for(user).patch(
        f"/api/v1/cells/{cell.pk}/",
        {"x": cell.x + dx, "y": cell.y, "version": cell.version},
        format="json",
    )


def test_a_cell_with_another_rounds_label_cannot_be_moved(
    study, scan, gold_cells, annotator, second_annotator
):
    cell = gold_cells[0]
    before = (cell.x, cell.y, cell.version)
    response = _move(second_annotator, cell, 50)
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "cannot be moved" in detail and "1 round(s) of other raters" in detail
    assert annotation.gold_round_for(study, annotator).name not in detail  # not his to see
    cell.refresh_from_db()
    assert (cell.x, cell.y, cell.version) == before
    own = _move(annotator, cell, 5)
    assert own.status_code == 200  # the examiner may still correct her own marker


def test_a_cell_in_a_blinded_round_cannot_be_moved_even_by_its_examiner(
    blinded,  # noqa: F811
    annotator,
):
    item = blinded["rita"].items.order_by("position").first()
    cell = item.cell
    response = _move(annotator, cell, 5)
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "blinded rounds show its patch" in detail and "rita" not in detail
    assert Cell.objects.get(pk=cell.pk).x == cell.x


def test_production_serves_the_api_as_json_only():
    probe = (
        "from django.test import Client; c = Client(); "
        "r = c.get('/api/v1/labels/', HTTP_ACCEPT='text/html', secure=True, "
        "HTTP_HOST='cytomark.example.org'); print(r.status_code, r['Content-Type'])"
    )
    result = run_manage("shell", "-c", probe, SECRET_KEY=secrets.token_urlsafe(64), **PRODUCTION)
    assert result.returncode == 0, result.stderr
    status, content_type = result.stdout.split()[-2:]
    assert status in {"401", "403", "406"} and content_type == "application/json", result.stdout


def test_nobody_but_its_uploader_learns_anything_of_an_upload(
    blinded,  # noqa: F811  (the fixture)
    study,
    coordinator,
    rater,
    outsider,
    annotator,
):
    """A blinded rater, an annotator, an outsider and a fellow coordinator try the coordinator's
    upload of a secret scan by every tus method and by registering it: each gets 404 (or 412
    without the tus header) and no header or body names it, its size or its progress."""
    secret = uploads.create_upload(
        coordinator, "4242", tus_metadata(filename="secret-P-001.svs", study="munich")
    )
    fellow = UserFactory(username="cleo")
    Membership.objects.create(study=study, user=fellow, role=Membership.Role.COORDINATOR)
    url = f"/api/v1/uploads/{secret.pk}/"
    tus = {"HTTP_TUS_RESUMABLE": "1.0.0"}
    for user in (rater, annotator, outsider, fellow):
        client = APIClient()
        client.force_login(user)
        answers = [
            client.head(url, **tus),
            client.generic(
                "PATCH",
                url,
                b"x" * 10,
                content_type="application/offset+octet-stream",
                HTTP_UPLOAD_OFFSET="0",
                **tus,
            ),
            client.delete(url, **tus),
            client.post(
                "/api/v1/scans/", {"study": "munich", "uploads": [str(secret.pk)]}, format="json"
            ),
        ]
        for response in answers:
            assert response.status_code in (400, 403, 404), (user, response.status_code)
            shown = response.content.decode() + str(dict(response.headers))
            for needle in ("secret-P-001", "4242", "Upload-Offset", "Upload-Length"):
                assert needle not in shown, (user, needle, shown)
    assert ScanUpload.objects.get().offset == 0
