"""Deep Zoom tiles of a scan for the browser viewer.

Two geometries. A scan whose levels are stored as browser-ready JPEG tiles (generic tiled TIFF,
Aperio SVS, the synthetic scans; see `tile_passthrough`) gets Deep Zoom tiles of the file's own
tile size with no overlap, so a tile fully inside a level the file stores is the stored JPEG,
read with one pread and never decoded; edge tiles (cropped by Deep Zoom) and the levels the file
lacks are rendered by OpenSlide's `DeepZoomGenerator` from the nearest finer level and encoded
with Pillow (libjpeg-turbo). Every other scan keeps 254 px tiles with 1 px overlap, all rendered.

Around it: open slides (and the passthrough offset tables) are kept in a small per-process LRU
(opening a slide reads its whole directory, which costs more than a tile), and tiles go into the
configured Django cache under a key that holds the scan's checksum and tile scheme, so a tile is
made once for every process that shares the cache and can never be served for another file or
geometry. Callers check permission before calling anything here.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import openslide
from django.conf import settings
from django.core.cache import caches
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from .models import Scan
from .scans import local_path
from .tile_passthrough import PassthroughTiles, TiffLevel, open_passthrough

logger = logging.getLogger(__name__)

TILE_SIZE = 254
TILE_OVERLAP = 1
TILE_FORMAT = "jpeg"
TILE_QUALITY = 80
# Part of every cache key and ETag: change it when the tile parameters above change.
TILE_SCHEME = f"t{TILE_SIZE}o{TILE_OVERLAP}q{TILE_QUALITY}"
# Bump when the rules that choose a scan's geometry change, so remembered schemes are not reused.
SCHEME_RULES = 1


def passthrough_scheme(tile_size: int) -> str:
    """The scheme of a passthrough scan: its tile size, no overlap, rendered tiles' quality."""
    return f"p{tile_size}q{TILE_QUALITY}"


class TileNotFound(LookupError):
    """A level, column or row outside the scan's pyramid."""


@dataclass(frozen=True)
class OpenScan:
    slide: openslide.AbstractSlide
    deep_zoom: DeepZoomGenerator
    scheme: str
    passthrough: PassthroughTiles | None = None
    # Deep Zoom level -> the stored level it is, for the levels served as stored bytes.
    stored: dict[int, TiffLevel] = field(default_factory=dict)

    def close(self) -> None:
        self.slide.close()
        if self.passthrough is not None:
            self.passthrough.close()


class SlideHandles:
    """A per-process LRU of open slides keyed by (scan id, checksum); thread-safe.

    Written by hand because `functools.lru_cache` cannot close what it evicts, and an open
    slide holds a file descriptor and OpenSlide's caches.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._open: OrderedDict[tuple[int, str], OpenScan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, scan: Scan) -> OpenScan:
        key = (scan.pk, scan.sha256)
        with self._lock:
            found = self._open.get(key)
            if found is not None:
                self._open.move_to_end(key)
                return found
        opened = _open_scan(scan)
        with self._lock:
            found = self._open.setdefault(key, opened)
            self._open.move_to_end(key)
            evicted = []
            while len(self._open) > self.capacity:
                evicted.append(self._open.popitem(last=False)[1])
        if found is not opened:
            opened.close()
        for old in evicted:
            old.close()
        return found

    def clear(self) -> None:
        with self._lock:
            handles, self._open = list(self._open.values()), OrderedDict()
        for handle in handles:
            handle.close()

    def __len__(self) -> int:
        return len(self._open)


def _open_scan(scan: Scan) -> OpenScan:
    path = str(local_path(scan))
    slide = openslide.open_slide(path)
    if isinstance(slide, openslide.ImageSlide):
        # A photo: ImageSlide decodes the file on its first read, and two tile requests at once
        # would decode it together (Pillow's lazy load is not thread-safe). Decode it here.
        slide.close()
        with Image.open(path) as image:
            slide = openslide.ImageSlide(image.copy())
        opened = OpenScan(slide, _default_deep_zoom(slide), TILE_SCHEME)
    else:
        opened = _open_tiled(path, slide)
    _remember_scheme(scan, opened.scheme)
    return opened


def _default_deep_zoom(slide: openslide.AbstractSlide) -> DeepZoomGenerator:
    return DeepZoomGenerator(slide, TILE_SIZE, TILE_OVERLAP, limit_bounds=False)


def _open_tiled(path: str, slide: openslide.AbstractSlide) -> OpenScan:
    vendor = slide.properties.get(openslide.PROPERTY_NAME_VENDOR)
    try:
        passthrough, refusals = open_passthrough(path, vendor, slide.level_dimensions)
        for refusal in refusals:
            logger.debug("Tiles of %s page %s are rendered: %s", path, refusal.page, refusal.reason)
    except Exception:
        # Passthrough only makes tiles faster; a TIFF that tifffile cannot follow is still
        # served, rendered by OpenSlide as before.
        logger.warning("No tile passthrough for %s: tifffile could not read it", path)
        passthrough = None
    if passthrough is None:
        return OpenScan(slide, _default_deep_zoom(slide), TILE_SCHEME)
    deep_zoom = DeepZoomGenerator(slide, passthrough.tile_size, 0, limit_bounds=False)
    stored = {}
    for level in passthrough.levels.values():
        for dz_level, (width, height) in enumerate(deep_zoom.level_dimensions):
            if abs(level.width - width) <= 1 and abs(level.height - height) <= 1:
                stored[dz_level] = level
                break
    return OpenScan(
        slide, deep_zoom, passthrough_scheme(passthrough.tile_size), passthrough, stored
    )


slide_handles = SlideHandles(settings.SLIDE_HANDLE_CACHE_SIZE)

# Checksum -> scheme: a pure function of the file, so it never goes stale. Kept apart from the
# open slides (and in the shared cache) so that a cached tile is served without the file.
_schemes: dict[str, str] = {}


def _scheme_key(scan: Scan) -> str:
    return f"tilescheme:{SCHEME_RULES}:{scan.sha256}"


def _remember_scheme(scan: Scan, scheme: str) -> None:
    if _schemes.get(scan.sha256) != scheme:
        _schemes[scan.sha256] = scheme
        caches[settings.TILE_CACHE_ALIAS].set(
            _scheme_key(scan), scheme, timeout=settings.TILE_CACHE_SECONDS
        )


def tile_scheme(scan: Scan) -> str:
    """The scan's tile geometry and encoding in [a-z0-9], e.g. "p256q80" or "t254o1q80"."""
    scheme = _schemes.get(scan.sha256)
    if scheme is None:
        scheme = caches[settings.TILE_CACHE_ALIAS].get(_scheme_key(scan))
        if scheme is None:
            scheme = slide_handles.get(scan).scheme
        _schemes[scan.sha256] = scheme
    return scheme


def dzi_descriptor(scan: Scan) -> str:
    """The Deep Zoom descriptor (XML) OpenSeadragon reads first."""
    return slide_handles.get(scan).deep_zoom.get_dzi(TILE_FORMAT)


def tile_etag(scan: Scan, level: int, col: int, row: int) -> str:
    """A strong validator: the tile's bytes follow from the file's checksum and the scheme."""
    return f'"{scan.sha256[:20]}-{tile_scheme(scan)}-{level}-{col}-{row}"'


def tile_cache_key(scan: Scan, level: int, col: int, row: int) -> str:
    return f"tile:{scan.sha256}:{tile_scheme(scan)}:{level}:{col}:{row}"


def render_tile(scan: Scan, level: int, col: int, row: int) -> bytes:
    """The tile's JPEG, made now (no cache): stored bytes where it can, else rendered.

    TileNotFound outside the pyramid.
    """
    opened = slide_handles.get(scan)
    deep_zoom = opened.deep_zoom
    if not 0 <= level < deep_zoom.level_count:
        raise TileNotFound(f"Level {level} does not exist (0 to {deep_zoom.level_count - 1}).")
    cols, rows = deep_zoom.level_tiles[level]
    if not (0 <= col < cols and 0 <= row < rows):
        raise TileNotFound(
            f"Tile {col}_{row} is outside level {level}, which has {cols} x {rows} tiles."
        )
    stored = opened.stored.get(level)
    if stored is not None:
        width, height = deep_zoom.level_dimensions[level]
        side = stored.tile_size
        inside = (col + 1) * side <= min(width, stored.width) and (row + 1) * side <= min(
            height, stored.height
        )
        if inside:
            data = opened.passthrough.tile_jpeg(stored.slide_level, col, row)
            if data is not None:
                return data
    image = deep_zoom.get_tile(level, (col, row))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=TILE_QUALITY)
    return buffer.getvalue()


def tile_jpeg(scan: Scan, level: int, col: int, row: int) -> bytes:
    """The encoded tile, from the cache or made now; TileNotFound outside the pyramid."""
    cache = caches[settings.TILE_CACHE_ALIAS]
    key = tile_cache_key(scan, level, col, row)
    data = cache.get(key)
    if data is not None:
        return data
    data = render_tile(scan, level, col, row)
    cache.set(key, data, timeout=settings.TILE_CACHE_SECONDS)
    return data
