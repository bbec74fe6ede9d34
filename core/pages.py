"""HTML pages' errors: the domain's "not found" and "forbidden" as the site's own 404 and 403
pages naming the reason, and the site's 400 and 500 pages, whatever DEBUG is.

`guarded` turns a domain lookup's refusal into Django's Http404 / PermissionDenied;
`ErrorPagesMiddleware` answers those (and any other failure of a page) with `error_page`, so
Django's technical pages (the URLconf listing of a DEBUG 404) never reach a user, and an expected
refusal is logged as one line, never as a traceback. API paths keep their JSON errors
(core.api.errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpResponse, HttpResponseServerError
from django.shortcuts import render
from django.urls import Resolver404, get_resolver, resolve
from django.utils.log import log_response

from core.errors import ForbiddenError, NotFoundError
from core.http import API_PREFIX

T = TypeVar("T")

TITLES = {400: "Bad request", 403: "Not allowed", 404: "Page not found", 500: "Server error"}
# What a page says when the refusal carries no sentence of its own.
DEFAULT_REASONS = {
    400: "The request could not be understood.",
    403: "You may not open this page.",
    404: "There is no page at this address among those you may open.",
    500: "Something went wrong on the server; the error was logged.",
}


def guarded(lookup: Callable[..., T], *args, **kwargs) -> T:
    """Call a domain lookup for a page (e.g. the study a page is about): NotFoundError answers
    the 404 page, ForbiddenError the 403 page naming the reason."""
    try:
        return lookup(*args, **kwargs)
    except NotFoundError as exc:
        raise Http404(str(exc)) from None
    except ForbiddenError as exc:
        raise PermissionDenied(str(exc)) from None


def error_page(request, status: int, reason: str = "") -> HttpResponse:
    """The site's page for a refused or failed request: the reason in words, a link home and,
    for a visitor not logged in, a link to log in."""
    user = getattr(request, "user", None)
    context = {
        "status": status,
        "title": TITLES[status],
        "reason": reason or DEFAULT_REASONS[status],
        "offer_login": user is not None and not user.is_authenticated,
    }
    return render(request, "error.html", context, status=status)


def server_error_page(request) -> HttpResponse:
    """The 500 page, without any detail of the error; plain text if even the page fails (the
    database it reads the user from may be what failed)."""
    try:
        return error_page(request, 500)
    except Exception:
        return HttpResponseServerError(DEFAULT_REASONS[500], content_type="text/plain")


def refusal(exception: Exception) -> tuple[int, str] | None:
    """(status, reason) for a request refused on purpose, else None. A reason is shown only
    when it is a sentence of ours, never Django's resolver details."""
    for kinds, status in (
        ((Http404, NotFoundError), 404),
        ((PermissionDenied, ForbiddenError), 403),
        ((BadRequest, SuspiciousOperation), 400),
    ):
        if isinstance(exception, kinds):
            message = exception.args[0] if exception.args else ""
            return status, message if isinstance(message, str) else ""
    return None


def is_api(request) -> bool:
    return request.path.startswith(API_PREFIX)


class ErrorPagesMiddleware:
    """Answer every failed HTML page with the site's error page (API paths are left to the
    API's handlers). Sits after CommonMiddleware, which still turns a 404 into a redirect to
    the address with a slash.

    Under DEBUG Django answers an address no route matches with its technical 404 before any
    view runs, so the route is resolved here first and a miss answered by the site's handler404
    (JSON under /api/, the page elsewhere). A real failure keeps Django's technical 500
    page only where DEBUG and DEBUG_TECHNICAL_500 are both on."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if settings.DEBUG:
            urlconf = getattr(request, "urlconf", None)
            try:
                resolve(request.path_info, urlconf)
            except Resolver404 as exc:
                return get_resolver(urlconf).resolve_error_handler(404)(request, exc)
        return self.get_response(request)

    def process_exception(self, request, exception):
        if is_api(request):
            return None
        refused = refusal(exception)
        if refused is not None:
            return error_page(request, *refused)
        if settings.DEBUG and settings.DEBUG_TECHNICAL_500:
            return None
        response = server_error_page(request)
        log_response(
            "Internal Server Error: %s",
            request.path,
            response=response,
            request=request,
            exception=exception,
        )
        return response


def bad_request(request, exception=None):
    """handler400 for pages (Django refused the request before a view answered)."""
    return error_page(request, *(refusal(exception) or (400, "")))


def permission_denied(request, exception=None):
    """handler403 for pages."""
    return error_page(request, *(refusal(exception) or (403, "")))


def page_not_found(request, exception=None):
    """handler404 for pages."""
    return error_page(request, *(refusal(exception) or (404, "")))


def server_error(request):
    """handler500 for pages."""
    return server_error_page(request)


def csrf_failure(request, reason=""):
    """CSRF_FAILURE_VIEW: a form sent without a valid security token (most often a page left
    open past a logout or a new login) as the 403 page saying what to do."""
    return error_page(
        request,
        403,
        "The form was sent without a valid security token, perhaps from a page opened before "
        "you last logged in or out. Reload the page and send it again.",
    )
