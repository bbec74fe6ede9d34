"""API v1 from the client's side: authentication, per-study visibility, cells, labels, history,
optimistic concurrency, and a clear 4xx for everything a client can get wrong."""

import pytest
from rest_framework.test import APIClient

from annotator.models import Cell, Label, LabelChange, Membership, Scan

from .conftest import client_for


@pytest.fixture
def cell(study, scan, annotator, planted):
    first = planted[0]
    return Cell.objects.create(
        study=study, scan=scan, x=first["x"], y=first["y"], created_by=annotator
    )


def test_anonymous_requests_are_refused_with_json(db):
    response = APIClient().get("/api/v1/studies/")
    assert response.status_code in (401, 403)
    assert "credentials were not provided" in response.json()["detail"]


def test_token_authentication(annotator, study):
    client = APIClient()
    response = client.post("/api/v1/auth/token/", {"username": "anna", "password": "pass-word-123"})
    assert response.status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert [s["name"] for s in client.get("/api/v1/studies/").json()["results"]] == ["munich"]
    wrong = APIClient().post("/api/v1/auth/token/", {"username": "anna", "password": "nope"})
    assert wrong.status_code == 400


def test_users_see_only_studies_and_scans_they_are_members_of(study, scan, annotator, outsider):
    mine = client_for(annotator).get("/api/v1/studies/").json()["results"]
    assert [s["name"] for s in mine] == ["munich"]
    assert mine[0]["my_roles"] == ["annotator"] and mine[0]["scan_count"] == 1
    assert mine[0]["taxonomy"]["name"] == "aml-18"
    theirs = client_for(outsider)
    assert [s["name"] for s in theirs.get("/api/v1/studies/").json()["results"]] == ["elsewhere"]
    assert theirs.get(f"/api/v1/studies/{study.pk}/").status_code == 404
    assert theirs.get("/api/v1/scans/").json()["results"] == []
    assert theirs.get(f"/api/v1/scans/{scan.pk}/").status_code == 404


def test_scan_metadata(annotator, scan):
    body = client_for(annotator).get(f"/api/v1/scans/{scan.pk}/").json()
    assert body["width"] == 3000 and body["height"] == 2400
    assert body["mpp_x"] == pytest.approx(scan.mpp_x)
    assert body["sha256"] == scan.sha256 and body["patient"] == "P-001"
    assert body["studies"] == ["munich"]


def test_taxonomy_is_served_as_a_tree_with_groups(annotator, aml_taxonomy):
    body = client_for(annotator).get(f"/api/v1/taxonomies/{aml_taxonomy.pk}/").json()
    tree = body["tree"]
    assert tree["code"] == "LEU"
    assert [child["code"] for child in tree["children"]] == ["PHY", "PAT", "KSC"]
    myo = next(n for n in tree["children"][1]["children"] if n["code"] == "MYO")
    assert {n["code"] for n in myo["children"]} == {"MYON", "MYOA"}
    groups = {g["name"]: g for g in body["groups"]}
    assert groups["blast"]["leaves"] == ["MOB", "MYOA", "MYON"]
    assert body["leaf_count"] == 18


def test_coordinator_uploads_a_scan_and_a_corrupt_upload_is_refused(
    study, coordinator, annotator, synthetic_scan_files
):
    client = client_for(coordinator)
    path, _ = synthetic_scan_files[1]
    with path.open("rb") as handle:
        response = client.post(
            "/api/v1/scans/",
            {"study": "munich", "patient": "P-5", "file": handle},
            format="multipart",
        )
    assert response.status_code == 201, response.json()
    assert response.json()["width"] == 3000 and response.json()["original_name"] == path.name
    with path.open("rb") as handle:
        again = client.post(
            "/api/v1/scans/", {"study": "munich", "file": handle}, format="multipart"
        )
    assert again.status_code == 200 and again.json()["id"] == response.json()["id"]

    from django.core.files.uploadedfile import SimpleUploadedFile

    corrupt = SimpleUploadedFile("broken.svs", b"II*\x00" + b"\x00\xff" * 500)
    refused = client.post(
        "/api/v1/scans/", {"study": "munich", "file": corrupt}, format="multipart"
    )
    assert refused.status_code == 400
    assert "broken.svs" in refused.json()["file"][0]
    assert Scan.objects.count() == 1

    with path.open("rb") as handle:
        forbidden = client_for(annotator).post(
            "/api/v1/scans/", {"study": "munich", "file": handle}, format="multipart"
        )
    assert forbidden.status_code == 403 and "coordinator" in forbidden.json()["detail"]


def test_scan_registration_from_a_server_path_checks_the_import_roots(study, coordinator, tmp_path):
    response = client_for(coordinator).post(
        "/api/v1/scans/", {"study": "munich", "path": "/etc/passwd"}, format="json"
    )
    assert response.status_code == 400 and "outside the import roots" in response.json()["path"][0]
    neither = client_for(coordinator).post("/api/v1/scans/", {"study": "munich"}, format="json")
    assert neither.status_code == 400 and "exactly one of a file" in neither.json()["file"][0]


def test_place_move_and_delete_a_cell(annotator, scan):
    client = client_for(annotator)
    created = client.post(
        "/api/v1/cells/", {"study": "munich", "scan": scan.pk, "x": 100, "y": 200}, format="json"
    )
    assert created.status_code == 201, created.json()
    cell = created.json()
    assert cell["version"] == 1
    moved = client.patch(
        f"/api/v1/cells/{cell['id']}/", {"x": 150, "y": 210, "version": 1}, format="json"
    )
    assert moved.status_code == 200 and moved.json()["version"] == 2
    stale = client.patch(
        f"/api/v1/cells/{cell['id']}/", {"x": 1, "y": 1, "version": 1}, format="json"
    )
    assert stale.status_code == 409 and stale.json()["current"] == {
        "id": cell["id"],
        "x": 150,
        "y": 210,
        "version": 2,
    }
    listed = client.get(f"/api/v1/cells/?scan={scan.pk}").json()
    assert [c["id"] for c in listed["results"]] == [cell["id"]]
    assert client.delete(f"/api/v1/cells/{cell['id']}/?version=1").status_code == 409
    assert client.delete(f"/api/v1/cells/{cell['id']}/", HTTP_IF_MATCH='"2"').status_code == 204
    assert not Cell.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field", "text"),
    [
        ({"x": 3000, "y": 5}, "x", "outside the scan (0 <= x < 3000)"),
        ({"x": 5, "y": 2400}, "y", "outside the scan (0 <= y < 2400)"),
        ({"x": -1, "y": 5}, "x", "greater than or equal to 0"),
        ({"x": "left", "y": 5}, "x", "valid integer"),
        ({"y": 5}, "x", "required"),
    ],
)
def test_bad_cell_positions_are_refused(annotator, scan, payload, field, text):
    response = client_for(annotator).post(
        "/api/v1/cells/", {"study": "munich", "scan": scan.pk, **payload}, format="json"
    )
    assert response.status_code == 400
    assert text in response.json()[field][0]
    assert not Cell.objects.exists()


def test_cells_cannot_be_placed_in_a_study_of_which_one_is_not_a_member(
    outsider, scan, coordinator
):
    response = client_for(outsider).post(
        "/api/v1/cells/", {"study": "munich", "scan": scan.pk, "x": 5, "y": 5}, format="json"
    )
    assert response.status_code == 400
    assert "does not exist" in response.json()["study"][0]
    # A coordinator is a member but does not annotate.
    refused = client_for(coordinator).post(
        "/api/v1/cells/", {"study": "munich", "scan": scan.pk, "x": 5, "y": 5}, format="json"
    )
    assert refused.status_code == 403 and "annotator" in refused.json()["detail"]


def test_label_a_cell_change_it_and_read_the_history(annotator, cell):
    client = client_for(annotator)
    created = client.post(
        "/api/v1/labels/", {"cell": cell.pk, "node": "NGS", "seconds_spent": 2.5}, format="json"
    )
    assert created.status_code == 201, created.json()
    label = created.json()
    assert label["node"] == "NGS" and label["version"] == 1 and label["rater"] == "anna"
    changed = client.patch(
        f"/api/v1/labels/{label['id']}/",
        {"node": "NGB", "seconds_spent": 1.5, "version": 1},
        format="json",
    )
    assert changed.status_code == 200 and changed.json()["node"] == "NGB"
    assert changed.json()["seconds_spent"] == pytest.approx(4.0)
    unsure = client.patch(
        f"/api/v1/labels/{label['id']}/", {"cannot_classify": True, "version": 2}, format="json"
    )
    assert unsure.status_code == 200 and unsure.json()["node"] is None
    history = client.get(f"/api/v1/labels/{label['id']}/history/").json()
    assert [(h["action"], h["old_node"], h["new_node"]) for h in history] == [
        ("create", None, "NGS"),
        ("update", "NGS", "NGB"),
        ("update", "NGB", None),
    ]
    assert history[2]["new_cannot_classify"] is True
    assert all(h["changed_by"] == "anna" for h in history)
    assert client.delete(f"/api/v1/labels/{label['id']}/?version=3").status_code == 204
    assert LabelChange.objects.filter(cell_ref=cell.pk).count() == 4
    assert LabelChange.objects.last().old_cannot_classify is True


def test_a_stale_label_change_is_refused_with_409_and_the_newer_state(annotator, cell):
    client = client_for(annotator)
    label = client.post("/api/v1/labels/", {"cell": cell.pk, "node": "LYT"}, format="json").json()
    client.patch(f"/api/v1/labels/{label['id']}/", {"node": "MON", "version": 1}, format="json")
    stale = client.patch(
        f"/api/v1/labels/{label['id']}/", {"node": "EOS", "version": 1}, format="json"
    )
    assert stale.status_code == 409
    assert stale.json()["current"]["node"] == "MON" and stale.json()["current"]["version"] == 2
    twice = client.post("/api/v1/labels/", {"cell": cell.pk, "node": "EOS"}, format="json")
    assert twice.status_code == 409 and "already has a label" in twice.json()["detail"]
    assert Label.objects.get().node.code == "MON"
    assert LabelChange.objects.count() == 2


@pytest.mark.parametrize(
    ("payload", "field", "text"),
    [
        ({"node": "XYZ"}, "node", "Unknown taxon code 'XYZ'"),
        ({"node": "MYO"}, "node", "MYO is not a leaf"),
        ({"node": "NGS", "cannot_classify": True}, "node", "not both"),
        ({}, "node", "Give a node code"),
        ({"node": "NGS", "seconds_spent": -3}, "seconds_spent", "greater than or equal to 0"),
    ],
)
def test_bad_labels_are_refused_and_nothing_is_saved(annotator, cell, payload, field, text):
    response = client_for(annotator).post(
        "/api/v1/labels/", {"cell": cell.pk, **payload}, format="json"
    )
    assert response.status_code == 400
    assert text in response.json()[field][0]
    assert not Label.objects.exists() and not LabelChange.objects.exists()


def test_labels_in_a_study_one_is_not_in_are_refused(outsider, cell):
    response = client_for(outsider).post(
        "/api/v1/labels/", {"cell": cell.pk, "node": "NGS"}, format="json"
    )
    assert response.status_code == 400 and "does not exist" in response.json()["cell"][0]
    assert not Label.objects.exists()


def test_annotators_never_see_each_others_labels_but_coordinators_see_all(
    annotator, second_annotator, coordinator, cell
):
    client_for(annotator).post("/api/v1/labels/", {"cell": cell.pk, "node": "NGS"}, format="json")
    client_for(second_annotator).post(
        "/api/v1/labels/", {"cell": cell.pk, "node": "NGB"}, format="json"
    )
    anna = client_for(annotator).get("/api/v1/labels/").json()["results"]
    bert = client_for(second_annotator).get("/api/v1/labels/").json()["results"]
    assert [label["node"] for label in anna] == ["NGS"] and [label["node"] for label in bert] == [
        "NGB"
    ]
    other = Label.objects.get(rater=second_annotator)
    assert client_for(annotator).get(f"/api/v1/labels/{other.pk}/").status_code == 404
    assert client_for(annotator).get(f"/api/v1/labels/{other.pk}/history/").status_code == 404
    everything = client_for(coordinator).get(f"/api/v1/labels/?cell={cell.pk}").json()["results"]
    assert sorted(label["node"] for label in everything) == ["NGB", "NGS"]
    rounds = client_for(annotator).get("/api/v1/rounds/").json()["results"]
    assert [(r["kind"], r["rater"]) for r in rounds] == [("gold", "anna")]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("post", "/api/v1/labels/", "{not json"),
        ("post", "/api/v1/cells/", "[1, 2"),
    ],
)
def test_malformed_json_is_a_400(annotator, method, url, body):
    response = getattr(client_for(annotator), method)(url, body, content_type="application/json")
    assert response.status_code == 400 and "JSON parse error" in response.json()["detail"]


def test_bad_query_parameters_and_unknown_urls_are_4xx_json(annotator, study):
    client = client_for(annotator)
    response = client.get("/api/v1/cells/?scan=abc")
    assert response.status_code == 400 and "integer" in response.json()["scan"][0]
    assert client.get("/api/v1/labels/?round=-1").status_code == 400
    assert client.get("/api/v1/cells/?page=999").status_code == 404
    missing = client.get("/api/v1/no-such-thing/")
    assert missing.status_code == 404 and "No API endpoint" in missing.json()["detail"]
    assert client.get("/api/v1/cells/notanumber/").status_code == 404


def test_only_staff_create_studies_and_become_their_admin(annotator, aml_taxonomy):
    payload = {"name": "new-study", "title": "New", "taxonomy_id": aml_taxonomy.pk}
    assert client_for(annotator).post("/api/v1/studies/", payload, format="json").status_code == 403
    annotator.is_staff = True
    annotator.save()
    created = client_for(annotator).post("/api/v1/studies/", payload, format="json")
    assert created.status_code == 201, created.json()
    assert Membership.objects.filter(study__name="new-study", user=annotator, role="admin").exists()
    clash = client_for(annotator).post("/api/v1/studies/", payload, format="json")
    assert clash.status_code == 400 and "already exists" in clash.json()["name"][0]


def test_openapi_schema_and_docs_are_generated(annotator):
    client = client_for(annotator)
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/v1/cells/",
        "/api/v1/labels/{id}/history/",
        "/api/v1/scans/",
        "/api/v1/taxonomies/{id}/",
    ):
        assert path in paths
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
