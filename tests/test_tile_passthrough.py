"""Tile passthrough on real files: a scan stored as JPEG tiles is served in its own tile grid,
tiles inside a stored level as the stored bytes (standalone JPEGs that decode to OpenSlide's
pixels), edge tiles and missing levels rendered; scans that cannot be passed through (deflate)
keep the 254/1 geometry. Synthetic scans, an Aperio SVS (RGB-coded JPEG with JPEGTables) and a
deflate TIFF from OpenSlide's fixtures."""

from __future__ import annotations

import base64
import io
import re
import shutil
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide
import pytest
import tifffile
from django.conf import settings
from django.core.cache import caches
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from annotator import tiles
from annotator.scans import ingest_scan
from annotator.tile_passthrough import ADOBE_RGB, open_passthrough, read_header, tables_body

from .conftest import SHARED_DATA

FIXTURES = SHARED_DATA / "openslide-fixtures"
DZ_NAMESPACE = "{http://schemas.microsoft.com/deepzoom/2008}"

# JPEG tolerance, per channel over a tile's pixels, against OpenSlide's own pixels. Stored
# tiles are decoded by the same libjpeg-turbo as OpenSlide's, so they agree exactly (measured: 0
# everywhere). A rendered tile is encoded at quality 80, so it may differ from the reference as
# much as that reference encoded at quality 80 differs from itself, plus a margin (mean 0.5,
# 99th percentile 4); measured: the synthetic scan's full-resolution edge tile mean 0.74 and 99th
# percentile 4, its downsampled levels (dense red cells at those scales) mean 5.9-8.2, 99th
# percentile 23-29, exactly their reference's own re-encoding error.
STORED = (0.0, 0.0)
MARGIN = (0.5, 4)


def difference(image: Image.Image, reference: Image.Image) -> tuple[float, float]:
    """Mean and 99th percentile of the absolute per-channel difference."""
    assert image.size == reference.size
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    b = np.asarray(reference.convert("RGB"), dtype=np.int16)
    diff = np.abs(a - b)
    return float(diff.mean()), float(np.percentile(diff, 99))


def within(found: tuple[float, float], bound: tuple[float, float]) -> bool:
    return found[0] <= bound[0] and found[1] <= bound[1]


def close_to_reencoded(image: Image.Image, reference: Image.Image) -> bool:
    """Whether ``image`` is as close to ``reference`` as its own quality-80 JPEG would be."""
    buffer = io.BytesIO()
    reference.convert("RGB").save(buffer, "JPEG", quality=tiles.TILE_QUALITY)
    own = difference(decode(buffer.getvalue()), reference)
    found = difference(image, reference)
    return within(found, (own[0] + MARGIN[0], own[1] + MARGIN[1]))


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        image.load()
        return image.copy()


def raw_segment(path, page: int, index: int) -> bytes:
    """The tile's bytes as tifffile reads them from the file, undecoded."""
    with tifffile.TiffFile(path) as tif:
        stored = tif.pages[page]
        ((data, _),) = tif.filehandle.read_segments(
            [stored.dataoffsets[index]], [stored.databytecounts[index]]
        )
        return data


@pytest.fixture
def fixture_scan(study, coordinator, import_root):
    """Register one of OpenSlide's fixture files (copied into the import root)."""
    folder = import_root / "passthrough"
    folder.mkdir(exist_ok=True)

    def register(name: str):
        target = folder / name
        shutil.copy(FIXTURES / name, target)
        return ingest_scan(target, study=study, patient_code="P-900", user=coordinator).scan

    return register


@pytest.fixture
def slide(scan):
    opened = openslide.open_slide(str(scan.file.path))
    yield opened
    opened.close()


@pytest.fixture(autouse=True)
def _fresh_handles():
    tiles.slide_handles.clear()
    yield
    tiles.slide_handles.clear()


def descriptor(scan) -> ET.Element:
    return ET.fromstring(tiles.dzi_descriptor(scan))


def test_a_synthetic_scans_levels_are_all_passed_through(scan, slide):
    passthrough, refusals = open_passthrough(scan.file.path, "generic-tiff", slide.level_dimensions)
    try:
        assert refusals == []
        assert passthrough.tile_size == 256
        assert sorted(passthrough.levels) == [0, 1, 2]
        assert [(lv.width, lv.height) for lv in passthrough.levels.values()] == [
            (3000, 2400),
            (1500, 1200),
            (750, 600),
        ]
    finally:
        passthrough.close()


def test_the_dzi_states_the_files_tile_size_and_no_overlap(scan):
    image = descriptor(scan)
    assert (image.get("TileSize"), image.get("Overlap")) == ("256", "0")
    size = image.find(f"{DZ_NAMESPACE}Size")
    assert (size.get("Width"), size.get("Height")) == ("3000", "2400")
    assert tiles.tile_scheme(scan) == "p256q80"


@pytest.mark.parametrize(("dz_level", "slide_level", "col", "row"), [(12, 0, 3, 2), (11, 1, 1, 3)])
def test_an_inner_tile_is_the_stored_jpeg_and_decodes_to_openslides_pixels(
    scan, slide, dz_level, slide_level, col, row
):
    data = tiles.render_tile(scan, dz_level, col, row)
    across = -(-slide.level_dimensions[slide_level][0] // 256)
    # tifffile writes each tile as a whole JFIF JPEG: the stored bytes go out untouched.
    assert data == raw_segment(scan.file.path, slide_level, row * across + col)
    image = decode(data)
    assert image.size == (256, 256)
    scale = 2**slide_level
    reference = slide.read_region((col * 256 * scale, row * 256 * scale), slide_level, (256, 256))
    assert within(difference(image, reference), STORED)


def test_edge_tiles_are_rendered_at_deep_zooms_cropped_size(scan, slide):
    deep_zoom = DeepZoomGenerator(slide, 256, 0, limit_bounds=False)
    assert deep_zoom.level_tiles[12] == (12, 10)
    data = tiles.render_tile(scan, 12, 11, 9)
    image = decode(data)
    assert image.size == deep_zoom.get_tile_dimensions(12, (11, 9)) == (184, 96)
    # Not the stored tile, which tifffile padded to 256 x 256.
    assert data != raw_segment(scan.file.path, 0, 9 * 12 + 11)
    reference = slide.read_region((11 * 256, 9 * 256), 0, (184, 96))
    assert close_to_reencoded(image, reference)


@pytest.mark.parametrize("dz_level", [9, 8, 3])
def test_levels_the_file_lacks_are_rendered_from_the_nearest_finer_level(scan, slide, dz_level):
    deep_zoom = DeepZoomGenerator(slide, 256, 0, limit_bounds=False)
    width, height = deep_zoom.level_dimensions[dz_level]
    image = decode(tiles.render_tile(scan, dz_level, 0, 0))
    expected = deep_zoom.get_tile_dimensions(dz_level, (0, 0))
    # DeepZoomGenerator scales with Pillow's thumbnail, which keeps the aspect ratio and so may
    # give a pixel less than Deep Zoom's size (187 x 150 for 188 x 150), as it always has here.
    assert all(0 <= want - got <= 1 for got, want in zip(image.size, expected, strict=True))
    # The smallest stored level (750 x 600) resized as Pillow's thumbnail does.
    whole = slide.read_region((0, 0), 2, (750, 600)).convert("RGB")
    if image.size == expected:
        reference = whole.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=2.0)
        reference = reference.crop((0, 0, *image.size))
    else:
        reference = whole.resize(image.size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    assert close_to_reencoded(image, reference)


def test_tiles_outside_the_pyramid_are_not_found(scan):
    with pytest.raises(tiles.TileNotFound, match="Level 13 does not exist"):
        tiles.render_tile(scan, 13, 0, 0)
    with pytest.raises(tiles.TileNotFound, match="Tile 12_0 is outside level 12"):
        tiles.render_tile(scan, 12, 12, 0)


def test_tiles_read_at_once_from_many_threads_are_the_same_bytes(scan):
    wanted = [(12, col, row) for col in range(11) for row in range(9)]
    one_by_one = [tiles.render_tile(scan, *tile) for tile in wanted]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda tile: tiles.render_tile(scan, *tile), wanted * 3))
    assert together == one_by_one * 3


def test_an_aperio_rgb_tile_gets_its_tables_and_an_adobe_marker(fixture_scan):
    scan = fixture_scan("small.svs")
    path = scan.file.path
    with openslide.open_slide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        passthrough, refusals = open_passthrough(path, "aperio", slide.level_dimensions)
        reference = slide.read_region((0, 0), 0, (16, 16))
    try:
        assert refusals == [] and passthrough.tile_size == 64
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert page.photometric == 2 and page.jpegtables is not None
            tables = tables_body(page.jpegtables)
        stored = raw_segment(path, 0, 0)
        # As Aperio writes it: no JFIF or Adobe marker, component ids 0, 1, 2, which libjpeg
        # (Pillow, Chromium) would decode as YCbCr.
        assert not read_header(tables, stored).decoded_as_rgb
        data = passthrough.tile_jpeg(0, 0, 0)
        assert data == stored[:2] + ADOBE_RGB + tables + stored[2:]
        assert read_header(data).decoded_as_rgb
        image = decode(data)
        assert image.size == (64, 64)
        assert within(difference(image.crop((0, 0, 16, 16)), reference), STORED)
    finally:
        passthrough.close()

    # Its only Deep Zoom tile at full size is an edge tile (16 px of a 64 px grid): rendered.
    image = descriptor(scan)
    assert (image.get("TileSize"), image.get("Overlap")) == ("64", "0")
    assert tiles.tile_scheme(scan) == "p64q80"
    top = int(np.ceil(np.log2(16)))
    tile = decode(tiles.render_tile(scan, top, 0, 0))
    assert tile.size == (16, 16)
    assert close_to_reencoded(tile, reference)


def test_a_deflate_tiff_keeps_the_rendered_254_1_geometry(fixture_scan):
    scan = fixture_scan("boxes.tiff")
    path = scan.file.path
    with openslide.open_slide(path) as slide:
        passthrough, refusals = open_passthrough(path, "generic-tiff", slide.level_dimensions)
        assert passthrough is None
        assert "compression 8, not JPEG" in refusals[0].reason
        deep_zoom = DeepZoomGenerator(slide, 254, 1, limit_bounds=False)
        expected = io.BytesIO()
        deep_zoom.get_tile(deep_zoom.level_count - 1, (1, 0)).save(expected, "JPEG", quality=80)
        top = deep_zoom.level_count - 1
    image = descriptor(scan)
    assert (image.get("TileSize"), image.get("Overlap")) == ("254", "1")
    assert tiles.tile_scheme(scan) == "t254o1q80"
    assert tiles.render_tile(scan, top, 1, 0) == expected.getvalue()


def test_the_scheme_names_the_geometry_in_cache_keys_and_etags(scan, fixture_scan):
    other = fixture_scan("boxes.tiff")
    for each in (scan, other):
        scheme = tiles.tile_scheme(each)
        assert re.fullmatch(r"[a-z0-9]+", scheme)
        assert f":{scheme}:" in tiles.tile_cache_key(each, 1, 0, 0)
        assert f"-{scheme}-" in tiles.tile_etag(each, 1, 0, 0)
    assert tiles.tile_scheme(scan) != tiles.tile_scheme(other)


def test_a_cached_tile_and_its_scheme_need_no_file(scan):
    cache = caches[settings.TILE_CACHE_ALIAS]
    key = tiles.tile_cache_key(scan, 12, 4, 4)
    cache.delete(key)
    first = tiles.tile_jpeg(scan, 12, 4, 4)
    assert cache.get(key) == first
    tiles.slide_handles.clear()
    tiles._schemes.clear()
    stored = scan.file.path
    shutil.move(stored, stored + ".away")
    try:
        # The scheme comes from the shared cache, the tile too: the file is not opened.
        assert tiles.tile_scheme(scan) == "p256q80"
        assert tiles.tile_jpeg(scan, 12, 4, 4) == first
    finally:
        shutil.move(stored + ".away", stored)


DRAW_JPEG = """async (b64) => {
    const image = new Image();
    image.src = "data:image/jpeg;base64," + b64;
    await image.decode();
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    return Array.from(context.getImageData(0, 0, image.width, image.height).data);
}"""


def chromium_pixels(page, data: bytes) -> Image.Image:
    """The JPEG as Chromium decodes it (drawn on a canvas), as an RGB image."""
    size = decode(data).size
    rgba = page.evaluate(DRAW_JPEG, base64.b64encode(data).decode())
    return Image.frombytes("RGBA", size, bytes(rgba)).convert("RGB")


def stored_tile(path, vendor: str, col: int, row: int) -> tuple[bytes, Image.Image]:
    """A level-0 passthrough tile of the file and OpenSlide's pixels of its area (no scan row)."""
    with openslide.open_slide(str(path)) as slide:
        passthrough, _ = open_passthrough(str(path), vendor, slide.level_dimensions)
        try:
            side = passthrough.tile_size
            width, height = slide.dimensions
            size = (min(side, width - col * side), min(side, height - row * side))
            reference = slide.read_region((col * side, row * side), 0, size)
            return passthrough.tile_jpeg(0, col, row), reference
        finally:
            passthrough.close()


def test_chromium_decodes_passthrough_tiles_to_openslides_pixels(
    chromium_browser, synthetic_scan_files
):
    page = chromium_browser.new_page()
    data, reference = stored_tile(FIXTURES / "small.svs", "aperio", 0, 0)
    drawn = chromium_pixels(page, data).crop((0, 0, *reference.size))
    assert within(difference(drawn, reference), STORED)
    # The marker is what makes it right: without it Chromium takes Aperio's RGB for YCbCr.
    wrong = chromium_pixels(page, data.replace(ADOBE_RGB, b"", 1)).crop((0, 0, *reference.size))
    assert difference(wrong, reference)[0] > 20

    data, reference = stored_tile(synthetic_scan_files[0][0], "generic-tiff", 2, 1)
    assert within(difference(chromium_pixels(page, data), reference), STORED)
