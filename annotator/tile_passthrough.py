"""The scan file's own JPEG tiles, served as they are stored: no decode, no re-encode.

For a scan that OpenSlide reads as a generic tiled TIFF or an Aperio SVS, the TIFF pages that
are OpenSlide's levels are found with tifffile, and each level is checked for what a browser
can show as is: JPEG tiles of 8-bit RGB (colour-coded as RGB or YCbCr, interleaved), square,
as large as level 0's, at a size that is one of the Deep Zoom pyramid's levels. For such a level
one tile is one `os.pread` of its offset and byte count, made into a standalone JPEG by merging
the page's JPEGTables in after SOI (and an Adobe marker where the colour coding needs saying).

OpenSlide has no raw-tile API, and neither tifffile nor imagecodecs has a helper that splices
tables into a tile (tifffile hands the tables to the decoder instead), so the merge is written
here; it only concatenates marker segments.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np
import tifffile

PASSTHROUGH_VENDORS = frozenset({"generic-tiff", "aperio"})

COMPRESSION_JPEG = 7
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6
PLANARCONFIG_CONTIG = 1

# APP14 "Adobe", version 100, no flags, transform 0: the components are R, G, B as stored.
# libjpeg (and so Pillow and Chromium, both on libjpeg-turbo) takes a 3-component JPEG without
# JFIF or Adobe marker for YCbCr unless its component ids are 'R', 'G', 'B'; Aperio writes RGB
# tiles with ids 0, 1, 2 and relies on the TIFF's Photometric tag, which a browser never sees.
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_BROWSER_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG stream's markers up to SOS say about how a decoder will read it."""

    jfif: bool
    adobe_transform: int | None
    component_ids: tuple[int, ...]
    sof: int | None
    size: tuple[int, int] | None  # width, height from SOF
    has_tables: bool  # at least one DQT

    @property
    def decoded_as_rgb(self) -> bool:
        """Whether libjpeg will take the three components for RGB (else YCbCr)."""
        if self.jfif:
            return False
        if self.adobe_transform is not None:
            return self.adobe_transform == 0
        return self.component_ids == (82, 71, 66)


def read_header(*streams: bytes) -> JpegHeader:
    """Parse the marker segments of ``streams`` (e.g. JPEGTables, then a tile) up to SOS."""
    jfif = False
    adobe: int | None = None
    ids: tuple[int, ...] = ()
    sof = None
    size = None
    tables = False
    for data in streams:
        i = 0
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            if marker in (0xD9, 0xDA):
                break
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            segment = data[i + 4 : i + 2 + length]
            if marker == 0xE0 and segment.startswith(b"JFIF\x00"):
                jfif = True
            elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
                adobe = segment[11]
            elif marker == 0xDB:
                tables = True
            elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                sof = marker
                height, width, count = struct.unpack(">HHB", segment[1:6])
                size = (width, height)
                ids = tuple(segment[6 + 3 * k] for k in range(count))
            i += 2 + length
    return JpegHeader(jfif, adobe, ids, sof, size, tables)


def tables_body(jpegtables: bytes | None) -> bytes:
    """The marker segments of a JPEGTables stream (SOI ... EOI) without its SOI and EOI."""
    if not jpegtables:
        return b""
    body = jpegtables[2:] if jpegtables.startswith(_SOI) else jpegtables
    return body[:-2] if body.endswith(_EOI) else body


def standalone_jpeg(tile: bytes, insert: bytes) -> bytes:
    """The stored tile with ``insert`` (tables, colour marker) spliced in after SOI.

    A leading JFIF APP0 stays first, where the JFIF standard wants it.
    """
    if not insert:
        return tile
    at = 2
    if tile[2:4] == b"\xff\xe0":
        (length,) = struct.unpack(">H", tile[4:6])
        at = 4 + length
    return b"".join((tile[:at], insert, tile[at:]))


@dataclass(frozen=True)
class TiffLevel:
    """One OpenSlide level that is stored as browser-ready JPEG tiles."""

    slide_level: int
    page: int
    width: int
    height: int
    tile_size: int
    tiles_across: int
    tiles_down: int
    offsets: np.ndarray
    bytecounts: np.ndarray
    insert: bytes  # spliced in after each tile's SOI

    def tile_range(self, col: int, row: int) -> tuple[int, int] | None:
        """File offset and byte count of a stored tile; None when it has no data."""
        if not (0 <= col < self.tiles_across and 0 <= row < self.tiles_down):
            return None
        index = row * self.tiles_across + col
        count = int(self.bytecounts[index])
        return (int(self.offsets[index]), count) if count else None


@dataclass(frozen=True)
class Refusal:
    """Why a page cannot be passed through, in words."""

    page: int
    reason: str


class PassthroughTiles:
    """A scan's passthrough levels and an open file descriptor to read their tiles from.

    Reads are `os.pread`, which moves no shared file position, so threads may read at once.
    """

    def __init__(self, path: str, tile_size: int, levels: dict[int, TiffLevel]):
        self.tile_size = tile_size
        self.levels = levels
        self._fd = os.open(path, os.O_RDONLY)

    def stored_tile(self, slide_level: int, col: int, row: int) -> bytes | None:
        """The tile's bytes exactly as stored in the file (one pread), or None."""
        level = self.levels.get(slide_level)
        where = level.tile_range(col, row) if level else None
        if where is None:
            return None
        offset, count = where
        data = os.pread(self._fd, count, offset)
        return data if len(data) == count else None

    def tile_jpeg(self, slide_level: int, col: int, row: int) -> bytes | None:
        """The stored tile as a standalone JPEG; None where the file has none to give."""
        data = self.stored_tile(slide_level, col, row)
        if data is None or not data.startswith(_SOI):
            return None
        return standalone_jpeg(data, self.levels[slide_level].insert)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def deep_zoom_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Deep Zoom's level sizes, full size first: ceil(W / 2**k) down to 1 x 1."""
    sizes = [(width, height)]
    while sizes[-1] != (1, 1):
        w, h = sizes[-1]
        sizes.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    return sizes


def _near_a_deep_zoom_level(size: tuple[int, int], level0: tuple[int, int]) -> bool:
    return any(abs(size[0] - w) <= 1 and abs(size[1] - h) <= 1 for w, h in deep_zoom_sizes(*level0))


def _check_page(page: tifffile.TiffPage, tile_size: int) -> str | None:
    """Why the page's tiles cannot go to a browser as they are, or None if they can."""
    if page.compression != COMPRESSION_JPEG:
        return f"compression {int(page.compression)}, not JPEG"
    if page.bitspersample != 8 or page.samplesperpixel != 3:
        return f"{page.samplesperpixel} samples of {page.bitspersample} bits, not 8-bit RGB"
    if page.planarconfig != PLANARCONFIG_CONTIG:
        return "separate colour planes"
    if page.photometric not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR):
        return f"photometric {int(page.photometric)}, not RGB or YCbCr"
    if (page.tilewidth, page.tilelength) != (tile_size, tile_size) or page.tiledepth != 1:
        return f"tiles of {page.tilewidth} x {page.tilelength}, not level 0's {tile_size}"
    return None


def _insert_for(page: tifffile.TiffPage, first_tile: bytes) -> bytes | str:
    """What to splice after SOI so the tile decodes as OpenSlide decodes it, or why nothing can.

    OpenSlide, like tifffile, decodes the components as the Photometric tag says.
    """
    tables = tables_body(page.jpegtables)
    header = read_header(tables, first_tile)
    if header.sof not in _BROWSER_SOF:
        return "not a baseline or progressive Huffman JPEG"
    if not header.has_tables:
        return "no quantisation tables"
    if header.size != (page.tilewidth, page.tilelength):
        return f"JPEG frame of {header.size}, not the tile's size"
    want_rgb = page.photometric == PHOTOMETRIC_RGB
    if header.decoded_as_rgb == want_rgb:
        return tables
    if want_rgb and not header.jfif and header.adobe_transform is None:
        return ADOBE_RGB + tables
    return "the JPEG's colour markers contradict the TIFF's Photometric tag"


def open_passthrough(
    path: str, vendor: str | None, level_dimensions: tuple[tuple[int, int], ...]
) -> tuple[PassthroughTiles | None, list[Refusal]]:
    """The scan's passthrough levels (None when level 0 has none to give) and the refusals.

    Only pages of the main IFD chain are considered, as OpenSlide's generic-tiff and aperio
    drivers read; a page is an OpenSlide level when it is tiled and of that level's size.
    """
    if vendor not in PASSTHROUGH_VENDORS:
        return None, [Refusal(-1, f"vendor {vendor!r} is not passed through")]
    refusals: list[Refusal] = []
    levels: dict[int, TiffLevel] = {}
    with tifffile.TiffFile(path) as tif, open(path, "rb") as raw:
        tiled = {}
        for index, page in enumerate(tif.pages):
            if isinstance(page, tifffile.TiffPage) and page.is_tiled:
                tiled.setdefault((page.imagewidth, page.imagelength), (index, page))
        found = [tiled.get(tuple(size)) for size in level_dimensions]
        if found[0] is None:
            return None, [Refusal(-1, "level 0 is not a tiled page of the main IFD chain")]
        tile_size = found[0][1].tilewidth
        for slide_level, match in enumerate(found):
            if match is None:
                refusals.append(Refusal(-1, f"level {slide_level} has no tiled page"))
                continue
            index, page = match
            size = (page.imagewidth, page.imagelength)
            reason = _check_page(page, tile_size)
            if reason is None and not _near_a_deep_zoom_level(size, level_dimensions[0]):
                reason = f"size {size} is not a Deep Zoom level's"
            insert: bytes | str = ""
            if reason is None:
                offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
                counts = np.asarray(page.databytecounts, dtype=np.uint64)
                first = int(np.flatnonzero(counts)[0]) if counts.any() else None
                if first is None:
                    reason = "no tile data"
                else:
                    raw.seek(int(offsets[first]))
                    insert = _insert_for(page, raw.read(int(counts[first])))
                    if isinstance(insert, str):
                        reason = insert
            if reason is not None:
                refusals.append(Refusal(index, reason))
                continue
            levels[slide_level] = TiffLevel(
                slide_level=slide_level,
                page=index,
                width=size[0],
                height=size[1],
                tile_size=tile_size,
                tiles_across=math.ceil(size[0] / tile_size),
                tiles_down=math.ceil(size[1] / tile_size),
                offsets=offsets,
                bytecounts=counts,
                insert=insert,
            )
    if 0 not in levels:
        return None, refusals
    return PassthroughTiles(path, tile_size, levels), refusals
