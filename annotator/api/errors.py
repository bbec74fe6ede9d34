"""One shape for every API error: a 4xx JSON body that names the field and the problem."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.http import API_PREFIX, request_limit_error

from ..errors import ConflictError, DomainError, ForbiddenError, InUseError, NotFoundError
from ..models import Cell, Label
from ..taxonomy import TaxonomyError


def describe_current(obj) -> dict | None:
    """The stored state a stale client should reload, in the form the API serves it."""
    if isinstance(obj, Label):
        return {
            "id": obj.pk,
            "cell": obj.cell_id,
            "round": obj.round_id,
            "node": obj.node.code if obj.node else None,
            "cannot_classify": obj.cannot_classify,
            "version": obj.version,
        }
    if isinstance(obj, Cell):
        return {"id": obj.pk, "x": obj.x, "y": obj.y, "version": obj.version}
    return None


def exception_handler(exc, context):
    """DRF's handler, plus the domain's own errors mapped to 400 and 409, and bodies over
    Django's request limits to 413 / 400."""
    limit_error = request_limit_error(exc)
    if limit_error is not None:
        code, message = limit_error
        return Response({"detail": message}, status=code)
    if isinstance(exc, ConflictError):
        return Response(
            {"detail": str(exc), "current": describe_current(exc.current)},
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, InUseError):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, NotFoundError):
        return Response({"detail": str(exc)}, status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, ForbiddenError):
        return Response({"detail": str(exc)}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, DomainError):
        body = {exc.field: [str(exc)]} if exc.field else {"detail": str(exc)}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, TaxonomyError):
        return Response({"file": exc.problems}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        body = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)


def json_bad_request(request, exception=None):
    """400 for requests Django refuses before a view answers (a body or query over its limits,
    a suspicious header): JSON naming the limit under /api/, Django's page elsewhere."""
    if request.path.startswith(API_PREFIX):
        code, message = request_limit_error(exception) or (400, "Bad request.")
        return JsonResponse({"detail": message}, status=code)
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def json_not_found(request, exception=None):
    """404 for URLs that match no route: JSON under /api/, so API clients always get JSON."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": f"No API endpoint at {request.path}."}, status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)
