"""Error pages: a refused or failed page answers with the site's own page in its layout, the
reason in words and a way back, whatever DEBUG is; the API keeps its JSON errors. A page
refused on purpose logs one line, never a traceback; a real failure logs its traceback once.
Blinding: a scan a rater may not open and one that does not exist get the same answer."""

from __future__ import annotations

import logging
import re

import pytest
from django.test import Client

from annotator import rounds

from .urls_failing import FAILURE_DETAIL

SERVER_ERROR = "Something went wrong on the server; the error was logged."

CSRF_INPUT = re.compile(rb'name="csrfmiddlewaretoken" value="[^"]+"')


@pytest.fixture
def blinded_rater(study, gold_cells, rater, coordinator):
    """rita, rating a blinded round of munich: she may open none of its scans."""
    rounds.create_blinded_round(study, rater, coordinator, mode="all", seed=1, name="r1")
    return rater


@pytest.fixture(params=[False, True], ids=["production", "debug"])
def debug(request, settings):
    """Each test runs as production (DEBUG off) and as the embedded `make run` (DEBUG on)."""
    settings.DEBUG = request.param
    return request.param


def browser_for(user) -> Client:
    browser = Client()
    browser.force_login(user)
    return browser


def assert_error_page(response, status: int, reason: str) -> str:
    text = response.content.decode()
    assert response.status_code == status, text[:300]
    assert response["Content-Type"].startswith("text/html")
    assert 'class="topbar"' in text and f'data-status="{status}"' in text
    assert reason in text, text[:2000]
    assert 'href="/">Back to your studies</a>' in text
    assert "URLconf" not in text and "Traceback" not in text and "config.urls" not in text
    return text


def test_a_scan_the_rater_may_not_open_is_the_styled_404(debug, blinded_rater, scan):
    response = browser_for(blinded_rater).get(f"/studies/munich/scans/{scan.pk}/")
    text = assert_error_page(response, 404, "No such scan among those you may open")
    assert 'href="/login/"' not in text


def test_a_page_for_coordinators_is_the_styled_403_naming_the_reason(debug, rater, study):
    for url in ("/studies/munich/rounds/", "/studies/munich/datasets/"):
        response = browser_for(rater).get(url)
        assert_error_page(response, 403, "Only coordinators, data scientists and admins")


def test_an_address_no_route_matches_is_the_styled_404_and_offers_a_login(debug, db):
    response = Client().get("/no/such/page/")
    text = assert_error_page(response, 404, "There is no page at this address")
    assert 'href="/login/">Log in</a>' in text


def test_a_missing_slash_still_redirects(debug, db):
    assert Client().get("/login").status_code == 301


def test_the_api_keeps_its_json_errors(debug, rater, study):
    from .conftest import client_for

    missing = client_for(rater).get("/api/v1/no-such-endpoint/")
    assert missing.status_code == 404 and "No API endpoint" in missing.json()["detail"]
    hidden = client_for(rater).get("/api/v1/studies/999999/agreement/")
    assert hidden.status_code == 404 and hidden["Content-Type"] == "application/json"


def test_a_nul_in_a_page_address_is_the_styled_400(debug, db):
    response = Client().get("/", {"q": "\x00"})
    assert_error_page(response, 400, "q: Contains a NUL character")


def test_a_form_without_its_csrf_token_is_the_styled_403_saying_what_to_do(debug, annotator):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(annotator)
    response = browser.post("/logout/")
    assert_error_page(response, 403, "Reload the page and send it again.")


def test_hidden_and_missing_scans_answer_alike(debug, blinded_rater, scan):
    browser = browser_for(blinded_rater)
    browser.get("/studies/munich/scans/1/")  # the first answer sets the CSRF cookie
    hidden = browser.get(f"/studies/munich/scans/{scan.pk}/")
    missing = browser.get(f"/studies/munich/scans/{scan.pk + 1000}/")
    assert hidden.status_code == missing.status_code == 404
    assert dict(hidden.headers) == dict(missing.headers)
    # The logout form's CSRF token is masked afresh for every answer; the rest is the same.
    assert CSRF_INPUT.sub(b"", hidden.content) == CSRF_INPUT.sub(b"", missing.content)


def test_an_expected_refusal_logs_one_line_and_no_traceback(debug, blinded_rater, scan, caplog):
    browser = browser_for(blinded_rater)
    with caplog.at_level(logging.INFO):
        browser.get(f"/studies/munich/scans/{scan.pk}/")
        browser.get("/studies/munich/rounds/")
    refusals = [record for record in caplog.records if record.name == "django.request"]
    assert [record.getMessage() for record in refusals] == [
        f"Not Found: /studies/munich/scans/{scan.pk}/",
        "Forbidden: /studies/munich/rounds/",
    ]
    assert not any(record.exc_info for record in caplog.records)


@pytest.mark.urls("tests.urls_failing")
def test_a_failing_page_is_the_500_page_and_its_traceback_is_logged_once(debug, db, caplog):
    with caplog.at_level(logging.INFO):
        response = Client(raise_request_exception=False).get("/failing/")
    text = assert_error_page(response, 500, SERVER_ERROR)
    assert FAILURE_DETAIL not in text and "RuntimeError" not in text
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1 and logged[0].getMessage() == "Internal Server Error: /failing/"
    assert FAILURE_DETAIL in str(logged[0].exc_info[1])


@pytest.mark.urls("tests.urls_failing")
def test_a_failing_api_path_is_a_json_500_without_detail(db, caplog):
    response = Client(raise_request_exception=False).get("/api/v1/failing/")
    assert response.status_code == 500
    assert response.json() == {"detail": SERVER_ERROR}
    assert len([record for record in caplog.records if record.exc_info]) == 1


@pytest.mark.urls("tests.urls_failing")
def test_the_technical_500_page_is_shown_only_when_asked_for(db, settings):
    settings.DEBUG = True
    settings.DEBUG_TECHNICAL_500 = True
    response = Client(raise_request_exception=False).get("/failing/")
    assert response.status_code == 500 and FAILURE_DETAIL in response.content.decode()


def _console_handlers(logger_name: str, level: int) -> list[logging.Handler]:
    """The plain stream handlers a record of `logger_name` at `level` reaches (pytest's own
    capturing handlers left out)."""
    record = logging.LogRecord(logger_name, level, __file__, 1, "x", None, None)
    logger = logging.getLogger(logger_name)
    reached = []
    while logger is not None:
        reached += [
            handler
            for handler in logger.handlers
            if type(handler) is logging.StreamHandler
            and level >= handler.level
            and handler.filter(record)
        ]
        logger = logger.parent if logger.propagate else None
    return reached


def test_a_request_error_is_printed_once_even_under_debug(settings):
    settings.DEBUG = True
    assert len(_console_handlers("django.request", logging.ERROR)) == 1
    settings.DEBUG = False
    assert len(_console_handlers("django.request", logging.ERROR)) == 1
