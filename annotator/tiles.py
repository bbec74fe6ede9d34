"""Deep Zoom tiles of a scan for the browser viewer.

OpenSlide's `DeepZoomGenerator` does the tiling. Around it: open slides are kept in a small
per-process LRU (opening a slide reads its whole directory, which costs more than a tile), and
encoded tiles go into the configured Django cache under a key that holds the scan's checksum,
so a tile is encoded once for every process that shares the cache and can never be served for
another file. Callers check permission before calling anything here.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import openslide
from django.conf import settings
from django.core.cache import caches
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from .models import Scan
from .scans import local_path

TILE_SIZE = 254
TILE_OVERLAP = 1
TILE_FORMAT = "jpeg"
TILE_QUALITY = 80
# Part of every cache key and ETag: change it when the tile parameters above change.
TILE_SCHEME = f"t{TILE_SIZE}o{TILE_OVERLAP}q{TILE_QUALITY}"


class TileNotFound(LookupError):
    """A level, column or row outside the scan's pyramid."""


@dataclass(frozen=True)
class OpenScan:
    slide: openslide.AbstractSlide
    deep_zoom: DeepZoomGenerator


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
            opened.slide.close()
        for old in evicted:
            old.slide.close()
        return found

    def clear(self) -> None:
        with self._lock:
            handles, self._open = list(self._open.values()), OrderedDict()
        for handle in handles:
            handle.slide.close()

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
    return OpenScan(slide, DeepZoomGenerator(slide, TILE_SIZE, TILE_OVERLAP, limit_bounds=False))


slide_handles = SlideHandles(settings.SLIDE_HANDLE_CACHE_SIZE)


def dzi_descriptor(scan: Scan) -> str:
    """The Deep Zoom descriptor (XML) OpenSeadragon reads first."""
    return slide_handles.get(scan).deep_zoom.get_dzi(TILE_FORMAT)


def tile_etag(scan: Scan, level: int, col: int, row: int) -> str:
    """A strong validator: the tile's bytes follow from the file's checksum and the scheme."""
    return f'"{scan.sha256[:20]}-{TILE_SCHEME}-{level}-{col}-{row}"'


def tile_cache_key(scan: Scan, level: int, col: int, row: int) -> str:
    return f"tile:{scan.sha256}:{TILE_SCHEME}:{level}:{col}:{row}"


def tile_jpeg(scan: Scan, level: int, col: int, row: int) -> bytes:
    """The encoded tile, from the cache or made now; TileNotFound outside the pyramid."""
    cache = caches[settings.TILE_CACHE_ALIAS]
    key = tile_cache_key(scan, level, col, row)
    data = cache.get(key)
    if data is not None:
        return data
    deep_zoom = slide_handles.get(scan).deep_zoom
    if not 0 <= level < deep_zoom.level_count:
        raise TileNotFound(f"Level {level} does not exist (0 to {deep_zoom.level_count - 1}).")
    cols, rows = deep_zoom.level_tiles[level]
    if not (0 <= col < cols and 0 <= row < rows):
        raise TileNotFound(
            f"Tile {col}_{row} is outside level {level}, which has {cols} x {rows} tiles."
        )
    image = deep_zoom.get_tile(level, (col, row))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=TILE_QUALITY)
    data = buffer.getvalue()
    cache.set(key, data, timeout=settings.TILE_CACHE_SECONDS)
    return data


def tile_scheme(scan: Scan) -> str:
    """The tile geometry and encoding of the scan's pyramid, in cache keys and tile links."""
    return TILE_SCHEME
