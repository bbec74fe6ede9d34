"""Pages a person opens: the login page, the study list, the health check."""

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
