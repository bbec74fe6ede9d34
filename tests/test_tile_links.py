"""Signed tile links from the viewer's and the attacker's side: the descriptor hands a member a
link that serves tiles with no session and no database; a forged, altered or expired link is
refused; a link issued before its holder becomes a blinded rater, leaves the study, or sees the
scan moved into a study they rate blinded stops working at once; nginx-style delivery answers
with X-Accel-Redirect to a file holding the tile; a deleted scan leaves no tile behind."""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET

from django.test import Client
from PIL import Image

from annotator import rounds, tile_links, tile_store
from annotator.models import Membership, Study
from annotator.scans import ingest_scan

from .conftest import client_for

DZ_NAMESPACE = "{http://schemas.microsoft.com/deepzoom/2008}"


def tiles_url(user, scan) -> str:
    """The tile base the descriptor gives the user."""
    response = client_for(user).get(f"/api/v1/scans/{scan.pk}/tiles/scan.dzi")
    assert response.status_code == 200, response.content
    assert "no-store" in response["Cache-Control"]
    root = ET.fromstring(response.content)
    assert root.tag == f"{DZ_NAMESPACE}Image"
    return root.get("Url")


def fetch(url: str):
    """A request with no session and no API token: the link is all it carries."""
    return Client().get(url)


def refused(response, message: str) -> None:
    assert response.status_code == 403, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": message}


def retarget(url: str, **parts) -> str:
    """The link with some of its fields replaced (user, epoch, expires, signature, scan)."""
    names = ["user", "epoch", "expires", "signature", "scan"]
    fields = dict(zip(names, url.strip("/").split("/")[1:6], strict=True))
    fields.update({name: str(value) for name, value in parts.items()})
    return "/tiles/" + "/".join(fields[name] for name in names) + "/"


def test_a_member_gets_tiles_by_the_link_with_no_session_and_no_database(
    scan, annotator, django_assert_num_queries
):
    base = tiles_url(annotator, scan)
    assert base.startswith(f"/tiles/{annotator.pk}/") and base.endswith("/")
    assert f"/{scan.pk}-{scan.sha256[:16]}-" in base
    linked = fetch(base + "12/0_0.jpeg")
    assert linked.status_code == 200, linked.content
    assert linked["Content-Type"] == "image/jpeg"
    assert "immutable" in linked["Cache-Control"]
    session = client_for(annotator).get(f"/api/v1/scans/{scan.pk}/tiles/scan_files/12/0_0.jpeg")
    assert linked.content == session.content
    assert Image.open(io.BytesIO(linked.content)).format == "JPEG"
    with django_assert_num_queries(0):
        again = fetch(base + "12/0_0.jpeg")
        other = fetch(base + "11/0_0.jpeg")
    assert again.content == linked.content
    assert other.status_code == 200


def test_a_made_tile_is_kept_as_a_file(scan, annotator):
    base = tiles_url(annotator, scan)
    made = fetch(base + "12/1_0.jpeg")
    key = base.strip("/").split("/")[5]
    assert tile_store.tile_path(key, 12, 1, 0).read_bytes() == made.content


def test_outside_the_pyramid_is_a_404_naming_the_tile(scan, annotator):
    response = fetch(tiles_url(annotator, scan) + "12/999_0.jpeg")
    assert response.status_code == 404
    assert "999_0" in response.json()["detail"]


def test_a_tampered_link_is_refused(scan, annotator, coordinator):
    base = tiles_url(annotator, scan)
    signature = base.strip("/").split("/")[4]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    refused(fetch(retarget(base, signature=flipped) + "12/0_0.jpeg"), tile_links.INVALID)
    refused(fetch(retarget(base, user=coordinator.pk) + "12/0_0.jpeg"), tile_links.INVALID)
    later = int(base.strip("/").split("/")[3]) + 3600
    refused(fetch(retarget(base, expires=later) + "12/0_0.jpeg"), tile_links.INVALID)


def test_an_expired_link_is_refused(scan, annotator, settings):
    long_ago = time.time() - 3 * settings.TILE_LINK_SECONDS
    link = tile_links.issue(annotator, scan, now=long_ago)
    refused(fetch(link.tiles_url + "12/0_0.jpeg"), tile_links.EXPIRED)


def test_an_outsiders_link_to_their_own_scan_opens_no_other_scan(
    study, scan, outsider, synthetic_scan_files
):
    assert client_for(outsider).get(f"/api/v1/scans/{scan.pk}/tiles/scan.dzi").status_code == 404
    assert client_for(outsider).get(f"/api/v1/scans/{scan.pk}/tiles/link").status_code == 404
    elsewhere = Study.objects.get(name="elsewhere")
    path, _ = synthetic_scan_files[1]
    theirs = ingest_scan(path, study=elsewhere, patient_code="E-1", user=outsider).scan
    base = tiles_url(outsider, theirs)
    assert fetch(base + "12/0_0.jpeg").status_code == 200
    ours = tile_links.scan_key(scan)
    refused(fetch(retarget(base, scan=ours) + "12/0_0.jpeg"), tile_links.INVALID)


def test_becoming_a_blinded_rater_withdraws_a_link_issued_minutes_earlier(
    study, scan, gold_cells, rater, coordinator
):
    link = tile_links.issue(rater, scan, now=time.time() - 180)
    tile = link.tiles_url + "12/0_0.jpeg"
    assert fetch(tile).status_code == 200
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1)
    refused(fetch(tile), tile_links.WITHDRAWN)
    refused(fetch(link.tiles_url + "11/0_0.jpeg"), tile_links.WITHDRAWN)
    rater_client = client_for(rater)
    assert rater_client.get(f"/api/v1/scans/{scan.pk}/tiles/scan.dzi").status_code == 404
    assert rater_client.get(f"/api/v1/scans/{scan.pk}/tiles/link").status_code == 404


def test_leaving_the_study_withdraws_the_link(scan, annotator):
    tile = tiles_url(annotator, scan) + "12/0_0.jpeg"
    assert fetch(tile).status_code == 200
    Membership.objects.filter(user=annotator).delete()
    refused(fetch(tile), tile_links.WITHDRAWN)


def test_a_scan_moved_into_a_study_the_holder_rates_blinded_is_withdrawn(
    study, scan, gold_cells, rater, coordinator, aml_taxonomy, synthetic_scan_files
):
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1)
    other = Study.objects.create(name="other", title="Other", taxonomy=aml_taxonomy)
    Membership.objects.create(study=other, user=rater, role=Membership.Role.ANNOTATOR)
    path, _ = synthetic_scan_files[1]
    shared = ingest_scan(path, study=other, patient_code="O-1", user=coordinator).scan
    tile = tiles_url(rater, shared) + "12/0_0.jpeg"
    assert fetch(tile).status_code == 200
    study.scans.add(shared)
    refused(fetch(tile), tile_links.WITHDRAWN)
    assert client_for(rater).get(f"/api/v1/scans/{shared.pk}/tiles/link").status_code == 404


def test_a_withdrawal_touches_only_the_user_it_is_about(scan, annotator, coordinator):
    mine = tiles_url(annotator, scan) + "12/0_0.jpeg"
    theirs = tiles_url(coordinator, scan) + "12/0_0.jpeg"
    Membership.objects.filter(user=annotator).delete()
    refused(fetch(mine), tile_links.WITHDRAWN)
    assert fetch(theirs).status_code == 200


def test_a_switched_off_account_loses_its_links(scan, annotator):
    tile = tiles_url(annotator, scan) + "12/0_0.jpeg"
    annotator.is_active = False
    annotator.save()
    refused(fetch(tile), tile_links.WITHDRAWN)


def test_the_link_endpoint_renews_the_link(scan, annotator, settings):
    response = client_for(annotator).get(f"/api/v1/scans/{scan.pk}/tiles/link")
    assert response.status_code == 200
    link = response.json()
    assert settings.TILE_LINK_SECONDS <= link["expires_in"] <= settings.TILE_LINK_SECONDS * 1.25
    assert link["expires"] > time.time()
    assert fetch(link["tiles_url"] + "12/0_0.jpeg").status_code == 200
    assert Client().get(f"/api/v1/scans/{scan.pk}/tiles/link").status_code in (401, 403)


def test_behind_nginx_the_app_sends_a_new_tile_and_hands_a_kept_one_over(scan, annotator, settings):
    settings.TILE_ACCEL_REDIRECT = "/_tile_files/"
    base = tiles_url(annotator, scan)
    made = fetch(base + "12/0_0.jpeg")
    assert made.status_code == 200 and "X-Accel-Redirect" not in made
    key = base.strip("/").split("/")[5]
    stored = tile_store.tile_path(key, 12, 0, 0).read_bytes()
    assert made.content == stored
    assert Image.open(io.BytesIO(stored)).format == "JPEG"
    kept = fetch(base + "12/0_0.jpeg")
    assert kept.status_code == 200
    assert kept["X-Accel-Redirect"] == f"/_tile_files/{key}/12/0_0.jpeg"
    assert kept.content == b""


def test_a_deleted_scan_leaves_no_tile_files(scan, annotator, django_capture_on_commit_callbacks):
    base = tiles_url(annotator, scan)
    fetch(base + "12/0_0.jpeg")
    key = base.strip("/").split("/")[5]
    folder = tile_store.tile_path(key, 12, 0, 0).parents[1]
    assert folder.is_dir()
    with django_capture_on_commit_callbacks(execute=True):
        scan.delete()
    assert not folder.exists()
    refused(fetch(base + "12/0_0.jpeg"), tile_links.STALE)


def test_the_rater_sees_no_tile_link_in_the_queue(study, scan, gold_cells, rater, coordinator):
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1)
    rater_client = client_for(rater)
    queue = rater_client.get("/api/v1/queue/")
    assert queue.status_code == 200
    texts = [queue.content]
    for round_ in queue.json():
        texts.append(rater_client.get(f"/api/v1/queue/{round_['id']}/").content)
        texts.append(rater_client.get(f"/api/v1/queue/{round_['id']}/items/1/").content)
    page = Client()
    page.force_login(rater)
    screen = page.get(f"/queue/{queue.json()[0]['id']}/")
    assert screen.status_code == 200
    texts.append(screen.content)
    for text in texts:
        assert b"/tiles/" not in text
        assert scan.sha256[:16].encode() not in text
