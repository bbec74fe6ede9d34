"""Guards for HTML pages: the domain's "not found" and "forbidden" as Django's 404 and 403 pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.core.exceptions import PermissionDenied
from django.http import Http404

from core.errors import ForbiddenError, NotFoundError

T = TypeVar("T")


def guarded(lookup: Callable[..., T], *args, **kwargs) -> T:
    """Call a domain lookup for a page (e.g. the study a page is about): NotFoundError answers
    the 404 page, ForbiddenError the 403 page naming the reason."""
    try:
        return lookup(*args, **kwargs)
    except NotFoundError as exc:
        raise Http404(str(exc)) from None
    except ForbiddenError as exc:
        raise PermissionDenied(str(exc)) from None
