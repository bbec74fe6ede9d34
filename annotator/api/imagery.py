"""Image endpoints: Deep Zoom descriptor and tiles of a scan, and a cell's patch.

Plain Django views rather than DRF viewsets: a screen of the viewer asks for dozens of tiles,
and content negotiation and serializers add nothing to a JPEG. They accept the same
credentials as the API (session or token), check permission before any cache lookup, and
answer errors as JSON.
"""

from __future__ import annotations

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseNotModified, JsonResponse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from core.errors import DomainError, ForbiddenError, NotFoundError

from .. import access, blinding, patches, tiles
from ..models import Scan

# Tiles and patches never change under a URL (their bytes follow from the file's checksum), but
# they are private: the browser may keep them, shared caches may not.
PRIVATE_IMMUTABLE = {"private": True, "max_age": 7 * 24 * 3600, "immutable": True}


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"detail": message}, status=status)


def _user(request):
    """The session's user, else a token's (`Authorization: Token ...`), else anonymous."""
    if request.user.is_authenticated:
        return request.user
    try:
        found = TokenAuthentication().authenticate(request)
    except AuthenticationFailed:
        return request.user
    return found[0] if found else request.user


def _visible_scan(request, scan_id: int) -> Scan | JsonResponse:
    user = _user(request)
    if not user.is_authenticated:
        return _error(401, "Log in, or send an API token, to see scans.")
    scan = access.scan_for_tiles(user, scan_id)
    if scan is None:
        return _error(404, f"No scan {scan_id} among the scans of your studies.")
    return scan


@require_GET
def dzi(request, scan_id: int):
    """The scan's Deep Zoom descriptor."""
    scan = _visible_scan(request, scan_id)
    if isinstance(scan, JsonResponse):
        return scan
    response = HttpResponse(tiles.dzi_descriptor(scan), content_type="application/xml")
    patch_cache_control(response, private=True, max_age=3600)
    return response


@require_GET
def tile(request, scan_id: int, level: int, col: int, row: int):
    """One Deep Zoom tile as JPEG; 304 when the browser holds it, 404 outside the pyramid."""
    scan = _visible_scan(request, scan_id)
    if isinstance(scan, JsonResponse):
        return scan
    etag = tiles.tile_etag(scan, level, col, row)
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponseNotModified()
    else:
        try:
            data = tiles.tile_jpeg(scan, level, col, row)
        except tiles.TileNotFound as exc:
            return _error(404, str(exc))
        response = HttpResponse(data, content_type="image/jpeg")
    response["ETag"] = etag
    patch_cache_control(response, **PRIVATE_IMMUTABLE)
    return response


@require_GET
def cell_patch(request, cell_id: int):
    """A cell's patch as PNG, cut now if missing; headers say what of it is padding."""
    user = _user(request)
    if not user.is_authenticated:
        return _error(401, "Log in, or send an API token, to see patches.")
    cell = access.visible_cells(user).select_related("scan", "study").filter(pk=cell_id).first()
    if cell is None:
        return _error(404, f"No cell {cell_id} among the cells of your studies.")
    try:
        patch = patches.ensure_patch(cell)
    except DomainError as exc:
        return _error(404, str(exc))
    etag = f'"{patch.name}"'
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponseNotModified()
    else:
        response = FileResponse(default_storage.open(patch.name, "rb"), content_type="image/png")
    response["ETag"] = etag
    geometry = patch.geometry
    if geometry is not None:
        response["X-Patch-Size"] = f"{geometry.size}x{geometry.size}"
        response["X-Patch-Padded"] = "true" if geometry.padded else "false"
        response["X-Patch-Padding"] = geometry.describe_padding()
        response["X-Patch-Background"] = settings.PATCH_BACKGROUND
    patch_cache_control(response, **PRIVATE_IMMUTABLE)
    return response


@require_GET
def queue_patch(request, token: str):
    """A blinded item's patch: PNG bytes made afresh, with headers that say nothing of the cell.

    No ETag or padding headers (an ETag derived from the stored name would carry the scan's
    checksum and the position); the browser may keep the image for the session only.
    """
    user = _user(request)
    if not user.is_authenticated:
        return _error(401, "Log in, or send an API token, to see patches.")
    try:
        data = blinding.patch_png(user, token)
    except NotFoundError as exc:
        return _error(404, str(exc))
    except ForbiddenError as exc:
        return _error(403, str(exc))
    except DomainError:
        return _error(404, "This item's image is not available.")
    response = HttpResponse(data, content_type="image/png")
    patch_cache_control(response, private=True, no_store=True)
    return response
