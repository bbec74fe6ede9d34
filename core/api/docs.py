"""The API's documentation pages (Redoc, Swagger UI) as drf-spectacular serves them, kept on
this server: their files come from drf-spectacular-sidecar, and a Content-Security-Policy
stops the one request the Redoc bundle would still make elsewhere (its footer's logo, which
hides itself when it does not load), so the docs look the same offline."""

from __future__ import annotations

from functools import wraps

from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

# Inline scripts and styles: the pages' own init script and the bundles' generated styles;
# blob: workers: Redoc's search index.
SAME_ORIGIN_ONLY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
    ]
)


def same_origin_only(view):
    """The view's answer, allowed to load nothing from elsewhere."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = SAME_ORIGIN_ONLY
        return response

    return wrapped


def redoc_view():
    return same_origin_only(SpectacularRedocView.as_view(url_name="schema"))


def swagger_view():
    return same_origin_only(SpectacularSwaggerView.as_view(url_name="schema"))
