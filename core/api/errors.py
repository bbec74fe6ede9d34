"""One shape for every API error: a 4xx JSON body that names the field and the problem."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core import pages
from core.errors import DomainError
from core.http import API_PREFIX, request_limit_error


def exception_handler(exc, context):
    """DRF's handler, plus the domain's own errors with the status and body each names, and
    bodies over Django's request limits as 413 / 400."""
    limit_error = request_limit_error(exc)
    if limit_error is not None:
        code, message = limit_error
        return Response({"detail": message}, status=code)
    if isinstance(exc, DomainError):
        return Response(exc.body(), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        body = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)


def json_bad_request(request, exception=None):
    """400 for requests Django refuses before a view answers (a body or query over its limits,
    a suspicious header): JSON naming the limit under /api/, the site's 400 page elsewhere."""
    if request.path.startswith(API_PREFIX):
        code, message = request_limit_error(exception) or (400, "Bad request.")
        return JsonResponse({"detail": message}, status=code)
    return pages.bad_request(request, exception)


def json_permission_denied(request, exception=None):
    """403 outside a DRF view: JSON under /api/, the site's 403 page naming the reason elsewhere."""
    if request.path.startswith(API_PREFIX):
        return JsonResponse({"detail": str(exception or "") or "Not allowed."}, status=403)
    return pages.permission_denied(request, exception)


def json_not_found(request, exception=None):
    """404 for URLs that match no route: JSON under /api/, so API clients always get JSON."""
    if request.path.startswith(API_PREFIX):
        return JsonResponse({"detail": f"No API endpoint at {request.path}."}, status=404)
    return pages.page_not_found(request, exception)


def json_server_error(request):
    """500: JSON under /api/, the site's 500 page elsewhere; neither gives any detail."""
    if request.path.startswith(API_PREFIX):
        return JsonResponse({"detail": pages.DEFAULT_REASONS[500]}, status=500)
    return pages.server_error(request)
