"""The API's documentation: every operation of the generated schema has a summary, the image
endpoints (Deep Zoom descriptor and tiles, cell and queue patches) are in it with their media
types, and Redoc and Swagger UI load every file from this server (they must work offline)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from .conftest import client_for, log_in, new_page

IMAGE_OPERATIONS = {
    "/api/v1/scans/{scan_id}/tiles/scan.dzi": "application/xml",
    "/api/v1/scans/{scan_id}/tiles/scan_files/{level}/{col}_{row}.jpeg": "image/jpeg",
    "/api/v1/cells/{cell_id}/patch.png": "image/png",
    "/api/v1/queue/items/{token}/patch.png": "image/png",
}


def _schema(user) -> dict:
    response = client_for(user).get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def test_every_operation_has_a_summary(annotator):
    operations = [
        (method, path, operation)
        for path, methods in _schema(annotator)["paths"].items()
        for method, operation in methods.items()
    ]
    assert len(operations) >= 56
    missing = [f"{method} {path}" for method, path, op in operations if not op.get("summary")]
    assert not missing, missing
    summaries = [operation["summary"] for _, _, operation in operations]
    assert len(set(summaries)) == len(summaries), "two operations share a summary"


def test_the_image_endpoints_are_described_with_their_media_types(annotator):
    paths = _schema(annotator)["paths"]
    for path, media_type in IMAGE_OPERATIONS.items():
        operation = paths[path]["get"]
        assert list(operation["responses"]["200"]["content"]) == [media_type], path
        assert operation["responses"]["404"]["content"]["application/json"], path
        assert operation["description"], path


def test_the_doc_pages_link_nothing_outside_the_server(annotator):
    from django.test import Client

    browser = Client()
    browser.force_login(annotator)
    for url in ("/api/redoc/", "/api/docs/"):
        page = browser.get(url).content.decode()
        assert "googleapis" not in page and "cdn.jsdelivr" not in page, url
        assert "/static/drf_spectacular_sidecar/" in page, url


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "url,summary",
    [
        ("/api/redoc/", "h2:has-text('{}')"),
        ("/api/docs/", ".opblock-summary-description:text('{}')"),
    ],
)
def test_the_docs_render_with_every_request_kept_on_the_server(
    chromium_browser, live_server, annotator, url, summary
):
    host = urlsplit(live_server.url).netloc
    outside: list[str] = []

    def keep_on_server(route):
        if urlsplit(route.request.url).netloc == host:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page, problems = new_page(chromium_browser)
    blocked: list[str] = []
    page.on(
        "console",
        lambda message: (
            blocked.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.route("**/*", keep_on_server)
    log_in(page, live_server.url, annotator.username)
    page.goto(live_server.url + url)
    page.wait_for_selector(summary.format("One Deep Zoom tile of a scan"), timeout=20000)
    assert page.is_visible(summary.format("List your studies"))
    assert outside == []
    # The page's policy stops only Redoc's footer logo (which hides itself when not loaded).
    assert all("cdn.redoc.ly/redoc/logo-mini.svg" in text for text in blocked), blocked
    assert problems == []
