"""Endpoints that answer bytes (JPEG tiles, PNG patches, a Deep Zoom XML descriptor) as DRF
views, so the schema describes them, without DRF's content negotiation getting in the way: each
answers its one type whatever the client accepts, and its errors as JSON naming the problem."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    content_negotiation_class,
    permission_classes,
    renderer_classes,
)
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer

PROBLEM = inline_serializer("Problem", {"detail": serializers.CharField()})


class BytesRenderer(BaseRenderer):
    """Names the media type of an endpoint's answer for the schema. The view builds its image
    answers itself, so whatever DRF renders here is an error or OPTIONS metadata: JSON, and
    typed as JSON."""

    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        response = (renderer_context or {}).get("response")
        if response is not None:
            response["Content-Type"] = "application/json"
        return JSONRenderer().render(data)


class JPEGRenderer(BytesRenderer):
    media_type = "image/jpeg"
    format = "jpeg"


class PNGRenderer(BytesRenderer):
    media_type = "image/png"
    format = "png"


class XMLRenderer(BytesRenderer):
    media_type = "application/xml"
    format = "dzi"


class OneType(BaseContentNegotiation):
    """The endpoint's own renderer for every request: an image tag's `Accept` (or none) gets
    the image, never a 406."""

    def select_parser(self, request, parsers):
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def binary_responses(media_type: str, what: str, errors: dict[int, str]) -> dict:
    """The schema's responses of a bytes endpoint: 200 with `media_type`, each error status as
    a JSON problem (304, where given, without a body)."""
    responses = {(200, media_type): OpenApiResponse(OpenApiTypes.BINARY, description=what)}
    for status, description in errors.items():
        if status == 304:
            responses[304] = OpenApiResponse(description=description)
        else:
            responses[(status, "application/json")] = OpenApiResponse(
                PROBLEM, description=description
            )
    return responses


def bytes_view(renderer: type[BytesRenderer], *, authenticated: bool = True):
    """DRF's `api_view` for GET over a function view that answers `renderer`'s type: the API's
    authentication (token first, so that a wrong token is a 401, then the session) unless the
    URL carries its own proof (`authenticated=False`: no session or token is read at all), no
    permission class (the view answers 401 itself, with a sentence) and no content
    negotiation."""
    authenticators = [TokenAuthentication, SessionAuthentication] if authenticated else []

    def wrap(view):
        view = authentication_classes(authenticators)(view)
        view = content_negotiation_class(OneType)(view)
        view = renderer_classes([renderer])(view)
        view = permission_classes([AllowAny])(view)
        return api_view(["GET"])(view)

    return wrap
