"""What a request may carry, checked once at the door: no NUL character anywhere (PostgreSQL
cannot store one, so any query would fail), JSON nested no deeper than a real payload is, and
bodies within Django's size and field-count limits.

`RefuseNulMiddleware` checks every URL path, query parameter and page form; the API's parsers
(`BoundedJSONParser`, `BoundedFormParser`, `BoundedMultiPartParser`) check every body the API
reads. Both answer 400 naming the parameter or field at fault. `request_limit_error` says which
of Django's request limits a body broke, for the API's exception handler and the 400 handler.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import JsonResponse, QueryDict
from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError

NUL = "\x00"
NUL_MESSAGE = "Contains a NUL character (\\u0000), which no text field may hold."
API_PREFIX = "/api/"


def max_json_depth() -> int:
    return settings.API_MAX_JSON_DEPTH


def _where(path: tuple) -> str:
    """A readable address of a value inside a body: `config.layers[2]`."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _walk(value, path: tuple = ()) -> Iterator[tuple[tuple, object]]:
    """Every value of a parsed body with its address, depth first, without recursion."""
    pending = [(path, value)]
    while pending:
        where, current = pending.pop()
        yield where, current
        if isinstance(current, dict):
            for key, item in current.items():
                if isinstance(key, str) and NUL in key:
                    raise _nul_error((*where, key))
                pending.append(((*where, key), item))
        elif isinstance(current, list):
            pending.extend(((*where, index), item) for index, item in enumerate(current))


def _nul_error(path: tuple) -> ValidationError:
    if not path:
        return ValidationError({"detail": NUL_MESSAGE})
    field = str(path[0]).replace(NUL, "\\u0000")
    where = _where((field, *path[1:]))
    return ValidationError({field: [NUL_MESSAGE if len(path) == 1 else f"{where}: {NUL_MESSAGE}"]})


def check_body(data) -> None:
    """Refuse NUL in any key or string of a parsed body, and nesting past API_MAX_JSON_DEPTH."""
    limit = max_json_depth()
    for path, value in _walk(data):
        if len(path) > limit:
            raise ParseError(
                f"The body is nested more than {limit} levels deep (at {_where(path[:3])}...); "
                "no request needs that."
            )
        if isinstance(value, str) and NUL in value:
            raise _nul_error(path)


def _query_dict_as_lists(data: QueryDict) -> dict[str, list]:
    return dict(data.lists())


def read_bounded(stream) -> bytes:
    """The body, read no further than DATA_UPLOAD_MAX_MEMORY_SIZE allows."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None:
        return stream.read()
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
    return raw


class BoundedJSONParser(parsers.JSONParser):
    """DRF's JSON parser, with the body size limit Django applies to forms, a nesting limit
    (Python's parser would otherwise exhaust the stack on `[[[[...]]]]`) and no NUL."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = read_bounded(stream)
        try:
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:
            raise ParseError(
                f"JSON parse error - the body is nested more than {max_json_depth()} levels deep."
            ) from None
        check_body(data)
        return data


class BoundedFormParser(parsers.FormParser):
    """DRF's form parser, within DATA_UPLOAD_MAX_MEMORY_SIZE and without NUL."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = parsers.get_encoding(parser_context or {})
        data = QueryDict(read_bounded(stream), encoding=encoding)
        check_body(_query_dict_as_lists(data))
        return data


class BoundedMultiPartParser(parsers.MultiPartParser):
    """DRF's multipart parser (Django enforces its limits); form fields without NUL."""

    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        check_body(_query_dict_as_lists(parsed.data))
        return parsed


API_PARSERS = [BoundedJSONParser, BoundedFormParser, BoundedMultiPartParser]


def request_limit_error(exc: Exception) -> tuple[int, str] | None:
    """The status and message for a body over one of Django's request limits, else None."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return 413, (
            f"The request body is too large: more than {limit} bytes of form fields or JSON "
            "(DATA_UPLOAD_MAX_MEMORY_SIZE). Send scan files as multipart file uploads."
        )
    if isinstance(exc, TooManyFilesSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        return 400, f"The request has too many files: more than {limit}."
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return 400, f"The request has too many fields or parameters: more than {limit}."
    return None


def _nul_field(request) -> tuple[str, str] | None:
    """(name, message) of the first NUL in the URL, the query or a page form, else None."""
    if NUL in request.path:
        return "detail", "The URL path contains a NUL character (%00)."
    sources = [request.GET]
    form_types = ("application/x-www-form-urlencoded", "multipart/form-data")
    is_page_form = not request.path.startswith(API_PREFIX) and request.method == "POST"
    if is_page_form and request.content_type in form_types:
        sources.append(request.POST)
    for source in sources:
        for name, values in source.lists():
            if NUL in name:
                return "detail", "A parameter name contains a NUL character (%00)."
            if any(NUL in value for value in values):
                return name, NUL_MESSAGE
    return None


class RefuseNulMiddleware:
    """Answer 400 to a NUL character in the URL path, a query parameter or a page's form, before
    any view can pass it to the database: JSON naming the parameter under /api/, the site's 400
    page naming it elsewhere.
    (API bodies are checked by the API's parsers, which read them.)"""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        found = _nul_field(request)
        if found is None:
            return self.get_response(request)
        name, message = found
        if request.path.startswith(API_PREFIX):
            body = {name: message} if name == "detail" else {name: [message]}
            return JsonResponse(body, status=400)
        from core.pages import error_page

        shown = "" if name == "detail" else f"{name}: "
        return error_page(request, 400, f"{shown}{message}")
