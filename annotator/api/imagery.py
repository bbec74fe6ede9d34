"""Image endpoints: Deep Zoom descriptor and tiles of a scan, and a cell's patch.

Function views rather than viewsets: a screen of the viewer asks for dozens of tiles, and
content negotiation and serializers add nothing to a JPEG. DRF's `api_view` (`bytes_view`)
gives them the API's credentials (session or token) and a place in the schema; they check
permission before any cache lookup and answer errors as JSON.
"""

from __future__ import annotations

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseNotModified, JsonResponse
from django.utils.cache import patch_cache_control
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny

from core.api.binary import (
    PROBLEM,
    JPEGRenderer,
    PNGRenderer,
    XMLRenderer,
    binary_responses,
    bytes_view,
)
from core.errors import DomainError, ForbiddenError, NotFoundError

from .. import access, blinding, patches, tile_links, tile_store, tiles
from ..models import Scan

# Tiles and patches never change under a URL (their bytes follow from the file's checksum), but
# they are private: the browser may keep them, shared caches may not.
PRIVATE_IMMUTABLE = {"private": True, "max_age": 7 * 24 * 3600, "immutable": True}


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"detail": message}, status=status)


NOT_LOGGED_IN = "Not logged in and no valid API token sent."
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="The ETag of a copy the client holds: 304 when it is still the answer.",
)


def _visible_scan(request, scan_id: int) -> Scan | JsonResponse:
    user = request.user
    if not user.is_authenticated:
        return _error(401, "Log in, or send an API token, to see scans.")
    scan = access.scan_for_tiles(user, scan_id)
    if scan is None:
        return _error(404, f"No scan {scan_id} among the scans of your studies.")
    return scan


@extend_schema(
    operation_id="scans_tiles_dzi_retrieve",
    summary="Deep Zoom descriptor of a scan",
    description="The DZI XML OpenSeadragon opens: the scan's size, tile size and format.",
    responses=binary_responses(
        "application/xml",
        "The Deep Zoom descriptor.",
        {401: NOT_LOGGED_IN, 404: "No such scan among the scans you may see."},
    ),
)
@bytes_view(XMLRenderer)
def dzi(request, scan_id: int):
    """The scan's Deep Zoom descriptor, its `Url` the signed link to the tiles."""
    scan = _visible_scan(request, scan_id)
    if isinstance(scan, JsonResponse):
        return scan
    link = tile_links.issue(request.user, scan)
    descriptor = tile_links.descriptor_with_link(tiles.dzi_descriptor(scan), link)
    response = HttpResponse(descriptor, content_type="application/xml")
    # Asked again at every opening: this request is where access is checked.
    patch_cache_control(response, private=True, no_store=True)
    return response


@extend_schema(
    operation_id="scans_tiles_link_retrieve",
    summary="A fresh signed link to a scan's tiles",
    description=(
        "The base URL of the scan's tiles (add `LEVEL/COL_ROW.jpeg`), signed for you and valid "
        "until `expires` (Unix seconds) or until you lose sight of the scan, whichever comes "
        "first. The viewer asks for one before its link runs out."
    ),
    responses={
        200: inline_serializer(
            "TileLink",
            {
                "tiles_url": serializers.CharField(),
                "expires": serializers.IntegerField(),
                "expires_in": serializers.IntegerField(),
            },
        ),
        (401, "application/json"): OpenApiResponse(PROBLEM, description=NOT_LOGGED_IN),
        (404, "application/json"): OpenApiResponse(
            PROBLEM, description="No such scan among the scans you may see."
        ),
    },
)
@api_view(["GET"])
@permission_classes([AllowAny])
def tile_link(request, scan_id: int):
    """A new signed link to the scan's tiles, for a viewer whose link is about to expire."""
    scan = _visible_scan(request, scan_id)
    if isinstance(scan, JsonResponse):
        return scan
    link = tile_links.issue(request.user, scan)
    response = JsonResponse(
        {"tiles_url": link.tiles_url, "expires": link.expires, "expires_in": link.seconds_left()}
    )
    patch_cache_control(response, private=True, no_store=True)
    return response


@extend_schema(
    operation_id="tiles_signed_retrieve",
    summary="One Deep Zoom tile, by a signed link",
    description=(
        "A JPEG tile under a link from the scan's descriptor or `tiles/link`: the link is the "
        "permission (no session or token is read). Refused with 403 once it has expired or "
        "been withdrawn (you lost sight of the scan): open the scan again."
    ),
    auth=[],
    responses=binary_responses(
        "image/jpeg",
        "The tile.",
        {
            403: "The link is not valid, has expired or was withdrawn.",
            404: "No such tile in the scan's pyramid.",
        },
    ),
)
@bytes_view(JPEGRenderer, authenticated=False)
def signed_tile(request, user_id, epoch, expires, signature, scan_key, level, col, row):
    """A tile by its signed link: made once and kept as a file. A tile made now is answered
    with its bytes (they are in hand); one already kept is handed to nginx (X-Accel-Redirect)
    where there is one, which sends kept tiles itself anyway and asks here only for new ones.
    The URL's pattern has already bounded every number."""
    level, col, row = int(level), int(col), int(row)
    try:
        tile_links.verify(int(user_id), epoch, int(expires), signature, scan_key)
        scan = tile_links.scan_for_link(scan_key)
    except tile_links.TileLinkRefused as exc:
        return _error(403, str(exc))
    path = tile_store.tile_path(scan_key, level, col, row)
    data = None
    if not path.is_file():
        try:
            data = tiles.render_tile(scan, level, col, row)
        except tiles.TileNotFound as exc:
            return _error(404, str(exc))
        tile_store.store(scan_key, level, col, row, data)
    if data is None and settings.TILE_ACCEL_REDIRECT:
        response = HttpResponse(content_type="image/jpeg")
        response["X-Accel-Redirect"] = tile_store.accel_path(scan_key, level, col, row)
        return response
    if data is None:
        data = path.read_bytes()
    response = HttpResponse(data, content_type="image/jpeg")
    patch_cache_control(response, **PRIVATE_IMMUTABLE)
    return response


@extend_schema(
    operation_id="scans_tiles_retrieve",
    summary="One Deep Zoom tile of a scan",
    description=(
        "A JPEG tile of the scan's Deep Zoom pyramid at `level` (0 is one pixel), column `col` "
        "and row `row`. Tiles never change under their URL: the browser may keep them; send "
        "the ETag back in If-None-Match to revalidate."
    ),
    parameters=[IF_NONE_MATCH],
    responses=binary_responses(
        "image/jpeg",
        "The tile.",
        {
            304: "The copy named by If-None-Match is current.",
            401: NOT_LOGGED_IN,
            404: "No such scan among the scans you may see, or no such tile in its pyramid.",
        },
    ),
)
@bytes_view(JPEGRenderer)
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


def _visible_cell(request, cell_id: int, what: str):
    """The cell if the requester may see it, else the 401 or 404 answer to send."""
    user = request.user
    if not user.is_authenticated:
        return _error(401, f"Log in, or send an API token, to see {what}.")
    cell = access.visible_cells(user).select_related("scan", "study").filter(pk=cell_id).first()
    if cell is None:
        return _error(404, f"No cell {cell_id} among the cells of your studies.")
    return cell


@extend_schema(
    operation_id="cells_patch_retrieve",
    summary="A cell's patch",
    description=(
        "The PNG patch around a cell, cut now if it has not been yet. X-Patch-Size, "
        "X-Patch-Padded, X-Patch-Padding and X-Patch-Background say how much of it lies "
        "beyond the scan's edge and with which colour it was filled."
    ),
    parameters=[IF_NONE_MATCH],
    responses=binary_responses(
        "image/png",
        "The patch.",
        {
            304: "The copy named by If-None-Match is current.",
            401: NOT_LOGGED_IN,
            404: "No such cell among the cells you may see, or no patch can be cut of it.",
        },
    ),
)
@bytes_view(PNGRenderer)
def cell_patch(request, cell_id: int):
    """A cell's patch as PNG, cut now if missing; headers say what of it is padding."""
    cell = _visible_cell(request, cell_id, "patches")
    if isinstance(cell, JsonResponse):
        return cell
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


@extend_schema(
    operation_id="cells_context_retrieve",
    summary="The scan around a cell",
    description=(
        f"A {patches.CONTEXT_SIDE_PX} px PNG of the scan {patches.CONTEXT_FACTOR} patch sides "
        "square around a cell, the patch outlined: what an adjudicator sees beside the patch. "
        "Cells that are only a patch have none."
    ),
    responses=binary_responses(
        "image/png",
        "The scan around the cell.",
        {
            401: NOT_LOGGED_IN,
            404: "No such cell among the cells you may see, or it has no scan around it.",
        },
    ),
)
@bytes_view(PNGRenderer)
def cell_context(request, cell_id: int):
    """The scan around a cell's patch, for the cells the user may see."""
    cell = _visible_cell(request, cell_id, "the scan around a cell")
    if isinstance(cell, JsonResponse):
        return cell
    try:
        data = patches.context_png(cell)
    except DomainError as exc:
        return _error(404, str(exc))
    response = HttpResponse(data, content_type="image/png")
    patch_cache_control(response, **PRIVATE_IMMUTABLE)
    return response


@extend_schema(
    operation_id="queue_items_patch_retrieve",
    summary="The patch of an item of your blinded round",
    description=(
        "The PNG patch of a queue item, by its opaque token: made afresh, without any header "
        "that could tell where the cell lies."
    ),
    responses=binary_responses(
        "image/png",
        "The patch.",
        {
            401: NOT_LOGGED_IN,
            403: "The round is not open (yet, or any more).",
            404: "No such item among your rounds' items.",
        },
    ),
)
@bytes_view(PNGRenderer)
def queue_patch(request, token: str):
    """A blinded item's patch: PNG bytes made afresh, with headers that say nothing of the cell.

    No ETag or padding headers (an ETag derived from the stored name would carry the scan's
    checksum and the position); the browser may keep the image for the session only.
    """
    user = request.user
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
