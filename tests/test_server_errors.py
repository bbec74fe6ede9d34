"""Requests a client can make that used to end in a server error: each must now be a 4xx JSON
answer naming the problem, with nothing written.

NUL characters (PostgreSQL cannot store them), names derived past their column's length, JSON
nested deep enough to exhaust the parser's stack, paths the file system refuses, bodies over
the size limits, and taxonomy files nested past any real tree.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from annotator import rounds
from annotator.models import Round, Scan, Taxonomy

from .conftest import client_for

STUDY_LISTS = [
    "/api/v1/cells/",
    "/api/v1/scans/",
    "/api/v1/rounds/",
    "/api/v1/classmaps/",
    "/api/v1/datasets/",
]


def _problem(response) -> str:
    """The whole JSON error body as text, to look for the names of the problem in."""
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return json.dumps(response.json())


@pytest.fixture
def overseer(study, coordinator, data_scientist):
    """A coordinator who is also the study's data scientist: every list is open to her."""
    from annotator.models import Membership

    Membership.objects.create(study=study, user=coordinator, role=Membership.Role.DATA_SCIENTIST)
    return coordinator


@pytest.mark.parametrize("url", STUDY_LISTS)
def test_a_nul_in_a_query_parameter_is_a_400_naming_it(overseer, url):
    response = client_for(overseer).get(url, {"study": "\x00"})
    assert response.status_code == 400
    assert "study" in _problem(response) and "NUL" in _problem(response)


def test_no_query_parameter_of_any_operation_takes_a_nul(overseer, study):
    """Every query parameter the schema names, on every GET operation without a path id."""
    client = client_for(overseer)
    schema = SchemaGenerator().get_schema(request=None, public=True)
    tried = 0
    for path, methods in schema["paths"].items():
        operation = methods.get("get")
        if operation is None:
            continue
        url = path.replace("{id}", str(study.pk))
        if "{" in url:
            continue
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "query":
                continue
            response = client.get(url, {parameter["name"]: "a\x00b"})
            assert response.status_code == 400, (url, parameter["name"], response.status_code)
            assert parameter["name"] in _problem(response), url
            tried += 1
    assert tried >= 15


def test_a_nul_in_a_query_parameter_of_a_page_is_a_400(overseer, study):
    browser = Client()
    browser.force_login(overseer)
    for url in ("/studies/munich/agreement/", "/studies/munich/rounds/", "/"):
        response = browser.get(url, {"collapse": "\x00"})
        assert response.status_code == 400, url
        assert b"NUL" in response.content


def test_a_nul_in_a_path_or_a_parameter_name_is_a_400(rater, study):
    client = client_for(rater)
    response = client.put("/api/v1/queue/items/a%00b/answer/", {"node": "NGS"}, format="json")
    assert response.status_code == 400 and "NUL" in _problem(response)
    response = client.get("/api/v1/rounds/", {"st\x00udy": "x"})
    assert response.status_code == 400 and "NUL" in _problem(response)


def test_a_nul_in_any_body_string_is_a_400_naming_the_field(overseer, study):
    client = client_for(overseer)
    before = Round.objects.count()
    cases = [
        ("/api/v1/rounds/", {"study": "munich\x00", "rater": "rita"}, "study"),
        ("/api/v1/rounds/", {"study": "munich", "rater": "rita", "per_class": {"N\x00": 1}}, ""),
        ("/api/v1/datasets/", {"study": "munich", "name": "d", "notes": "a\x00"}, "notes"),
        ("/api/v1/training-runs/", {"split": 1, "config": {"model": ["x\x00"]}}, "config"),
    ]
    for url, body, field in cases:
        response = client.post(url, body, format="json")
        assert response.status_code == 400, (url, body, response.status_code)
        assert "NUL" in _problem(response) and field in _problem(response), response.json()
    form = client.post("/api/v1/scans/", {"study": "munich", "path": "/tmp/a\x00b"})
    assert form.status_code == 400 and "path" in _problem(form) and "NUL" in _problem(form)
    assert Round.objects.count() == before


def test_a_repeat_of_a_round_with_a_long_name_gets_a_name_that_fits(
    study, gold_cells, rater, coordinator
):
    long_name = "r" * 200
    original = rounds.create_blinded_round(
        study, rater, coordinator, mode="all", seed=1, name=long_name
    )
    client = client_for(coordinator)
    when = (timezone.now() + timedelta(days=30)).isoformat()
    names = []
    for _ in range(2):
        response = client.post(
            f"/api/v1/rounds/{original.pk}/repeat/", {"not_before": when}, format="json"
        )
        assert response.status_code == 201, response.content[:300]
        names.append(response.json()["name"])
    assert len(set(names)) == 2
    field_length = Round._meta.get_field("name").max_length
    for name in names:
        assert len(name) <= field_length and "-repeat-" in name


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [100_000, 200])
def test_json_nested_too_deep_is_a_400(overseer, study, depth):
    client = client_for(overseer)
    body = '{"split": 1, "config": {"x": ' + _nested(depth) + "}}"
    response = client.generic(
        "POST", "/api/v1/training-runs/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert "nested" in _problem(response)


def test_ordinary_nesting_still_parses(overseer, study):
    client = client_for(overseer)
    response = client.post(
        "/api/v1/rounds/",
        {"study": "munich", "rater": "nobody", "per_class": {"NGS": 1}},
        format="json",
    )
    assert response.status_code == 400 and "rater" in response.json()


def test_a_server_path_too_long_for_the_file_system_is_a_400(coordinator, study, import_root):
    client = client_for(coordinator)
    before = Scan.objects.count()
    folder = import_root / study.name  # the study's own folder, where its coordinators may read
    folder.mkdir(exist_ok=True)
    room = 995 - len(str(folder))
    for path in (
        folder / ("a" * (room - 6) + ".tiff"),
        folder / ("b" * 300) / "scan.tiff",
    ):
        response = client.post("/api/v1/scans/", {"study": "munich", "path": str(path)})
        assert response.status_code == 400, response.content[:300]
        assert "path" in response.json() and "too long" in _problem(response)
    loop = folder / "loop.tiff"
    loop.unlink(missing_ok=True)
    loop.symlink_to(loop.name)
    try:
        response = client.post("/api/v1/scans/", {"study": "munich", "path": str(loop)})
    finally:
        loop.unlink()
    assert response.status_code == 400 and "loop" in response.json()["path"][0]
    assert Scan.objects.count() == before


def test_a_nul_in_a_page_form_is_a_400(overseer, study):
    browser = Client()
    browser.force_login(overseer)
    response = browser.post("/studies/munich/datasets/", {"action": "classmap", "name": "a\x00"})
    assert response.status_code == 400 and b"name" in response.content


def test_names_too_long_for_their_column_are_refused_wherever_they_come_from(
    overseer, study, curated, rater
):
    from core.errors import DomainError
    from datasets import classmaps, versions

    browser = Client()
    browser.force_login(overseer)
    page = browser.post("/studies/munich/datasets/", {"action": "classmap", "name": "m" * 300})
    assert page.status_code == 200 and b"at most 100 characters" in page.content
    with pytest.raises(DomainError, match="at most 100 characters"):
        versions.make_dataset(study, "d" * 101, overseer)
    with pytest.raises(DomainError, match="slug"):
        classmaps.save_class_map(study, "not a slug", classmaps.propose(study), overseer)
    with pytest.raises(DomainError, match="at most 200 characters"):
        rounds.create_blinded_round(study, rater, overseer, name="n" * 201)


def test_an_upload_named_past_the_file_systems_limit_is_stored_under_a_name_that_fits(
    coordinator, study, synthetic_scan_files
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    path, _ = synthetic_scan_files[1]
    upload = SimpleUploadedFile("é" * 250 + ".tiff", path.read_bytes(), "image/tiff")
    response = client_for(coordinator).post(
        "/api/v1/scans/", {"study": "munich", "file": upload}, format="multipart"
    )
    assert response.status_code == 201, response.content[:300]
    scan = Scan.objects.get(pk=response.json()["id"])
    assert scan.original_name.endswith(".tiff")
    assert len(Path(scan.file.name).name.encode()) <= 255


def test_a_body_over_the_size_limit_is_a_json_413(coordinator, study, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    client = client_for(coordinator)
    big = "x" * 5_000
    as_json = client.post("/api/v1/rounds/", {"study": "munich", "name": big}, format="json")
    as_form = client.post("/api/v1/rounds/", {"study": "munich", "name": big})
    for response in (as_json, as_form):
        assert response.status_code == 413, response.content[:200]
        assert "too large" in _problem(response) and "2000" in _problem(response)


def test_a_form_with_too_many_fields_is_a_json_400(coordinator, study, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    fields = {f"f{n}": "1" for n in range(50)}
    for form_format in ("multipart", None):
        response = client_for(coordinator).post("/api/v1/rounds/", fields, format=form_format)
        assert response.status_code == 400, response.content[:200]
        assert "fields" in _problem(response) and "10" in _problem(response)


def test_limits_broken_before_a_view_answers_are_json_too(coordinator, study, settings):
    """The session's CSRF check reads a form body, the NUL check every query string, both
    before the view: the answers are JSON naming the limit all the same."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(coordinator)
    browser.cookies["csrftoken"] = "a" * 32
    posted = browser.post("/api/v1/rounds/", {"name": "x" * 5_000})
    assert posted.status_code == 413 and "too large" in _problem(posted)
    queried = browser.get("/api/v1/rounds/", {f"q{n}": "1" for n in range(50)})
    assert queried.status_code == 400 and "too many" in _problem(queried)


def _deep_taxonomy(depth: int) -> str:
    lines = ["name: deep", "title: Deep", "nodes:", "  - {code: N0, name: root}"]
    for level in range(1, depth):
        leaf = level == depth - 1
        extra = ", hotkey: a, colour: '#123456'" if leaf else ""
        lines.append(f"  - {{code: N{level}, name: n{level}, parent: N{level - 1}{extra}}}")
    return "\n".join(lines) + "\n"


def test_a_taxonomy_nested_past_any_real_tree_is_refused_with_a_message(db, tmp_path):
    deep_yaml = tmp_path / "deep-yaml.yaml"
    deep_yaml.write_text("name: deep\ntitle: Deep\nnodes: " + "[" * 5000 + "]" * 5000 + "\n")
    deep_tree = tmp_path / "deep-tree.yaml"
    deep_tree.write_text(_deep_taxonomy(5000))
    for path, message in ((deep_yaml, "nested"), (deep_tree, "levels deep")):
        with pytest.raises(CommandError) as refused:
            call_command("load_taxonomy", str(path))
        assert message in str(refused.value), str(refused.value)[:300]
    assert not Taxonomy.objects.filter(name="deep").exists()


def test_a_taxonomy_of_ordinary_depth_still_loads(db, tmp_path):
    path = tmp_path / "ten.yaml"
    path.write_text(_deep_taxonomy(10))
    call_command("load_taxonomy", str(path))
    assert Taxonomy.objects.get(name="deep").nodes.count() == 10
