"""Pages a person opens: the login page, the study list, the health check."""

import re

from django.urls import reverse

from annotator.models import Cell


def test_login_page_and_login_redirects_to_the_study_list(client, annotator, scan):
    page = client.get("/login/")
    assert page.status_code == 200 and b"Log in" in page.content
    assert client.get("/").status_code == 302
    response = client.post(
        "/login/", {"username": "anna", "password": "pass-word-123"}, follow=True
    )
    assert response.status_code == 200
    text = response.content.decode()
    assert (
        "munich" in text
        and scan.original_name in text
        and "3000 \N{MULTIPLICATION SIGN} 2400" in text
    )


def test_wrong_password_is_shown_on_the_login_page(client, annotator):
    response = client.post("/login/", {"username": "anna", "password": "nope"})
    assert response.status_code == 200 and "didn't match" in response.content.decode()


def test_study_list_counts_cells_per_scan_and_hides_other_studies(
    client, annotator, outsider, scan, study
):
    Cell.objects.create(study=study, scan=scan, x=5, y=5)
    client.force_login(annotator)
    assert '<td class="cells">1</td>' in client.get("/").content.decode()
    client.force_login(outsider)
    assert scan.original_name not in client.get("/").content.decode()


def test_health_reports_database_and_cache(client, db):
    body = client.get("/health/").json()
    assert body == {"status": "ok", "database": "ok", "cache": "ok"}


def test_the_add_scans_page_is_linked_and_open_for_coordinators_only(
    client, coordinator, annotator, outsider, study
):
    page = reverse("add-scans", args=[study.name])
    client.force_login(coordinator)
    assert f'href="{page}"' in client.get("/").content.decode()
    opened = client.get(page)
    assert opened.status_code == 200
    config = opened.context["config"]
    assert config["study"] == study.name and config["urls"]["scans"] == reverse("scan-list")
    for user in (annotator, outsider):
        client.force_login(user)
        assert page not in client.get("/").content.decode()
        refused = client.get(page)
        assert refused.status_code == 403
        assert "add scans" in _reason(refused) and "coordinator" in _reason(refused)


def test_an_outsider_is_refused_alike_whether_or_not_the_study_exists(client, outsider, study):
    client.force_login(outsider)
    real = _reason(client.get(reverse("add-scans", args=[study.name])))
    made_up = _reason(client.get(reverse("add-scans", args=["nowhere"])))
    assert real.replace(study.name, "X") == made_up.replace("nowhere", "X")


def _reason(page) -> str:
    """The reason the 403 page gives."""
    assert page.status_code == 403
    return re.search(r'id="reason"[^>]*>(.*?)</p>', page.content.decode()).group(1)


def test_a_coordinator_who_does_not_label_gets_a_403_from_the_labelling_screen(
    client, coordinator, study, scan
):
    client.force_login(coordinator)
    refused = client.get(reverse("annotate", args=[study.name, scan.pk]))
    assert "label cells" in _reason(refused)


def test_the_admins_add_scan_leads_to_the_add_scans_page(client, coordinator, study):
    coordinator.is_staff = True
    coordinator.save()
    client.force_login(coordinator)
    answer = client.get("/admin/annotator/scan/add/")
    assert answer.status_code == 302
    assert answer["Location"] == reverse("add-scans", args=[study.name])
