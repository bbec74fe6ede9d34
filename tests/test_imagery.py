"""Tiles and patches from the viewer's side: Deep Zoom descriptor and tiles (sizes, caching
headers, 304, 404 outside the pyramid, permission before the shared cache), the slide-handle
LRU, and cell patches (size, padding at the scan's edge, no metadata, stored whole)."""

from __future__ import annotations

import io
import random
import shutil
import struct
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.files.storage import default_storage
from django.test import Client
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image, ImageColor
from rest_framework.authtoken.models import Token

from annotator import tiles
from annotator.models import Cell
from annotator.scans import ingest_scan

from .conftest import client_for

DZ_NAMESPACE = "{http://schemas.microsoft.com/deepzoom/2008}"


@pytest.fixture
def second_scan(study, coordinator, synthetic_scan_files):
    path, _ = synthetic_scan_files[1]
    return ingest_scan(path, study=study, patient_code="P-002", cohort="AML", user=coordinator).scan


@pytest.fixture
def member(client, annotator):
    """A browser session of an annotator of the study."""
    client.force_login(annotator)
    return client


@pytest.fixture
def reference(scan):
    """OpenSlide's own view of the scan's stored file, opened apart from the app's handles, in
    the synthetic scans' Deep Zoom geometry: the file's 256 px JPEG tiles, no overlap (their
    tiles are passed through, see test_tile_passthrough)."""
    slide = openslide.open_slide(str(Path(scan.file.path)))
    yield slide, DeepZoomGenerator(slide, 256, 0, limit_bounds=False)
    slide.close()


def tile_url(scan, level: int, col: int, row: int) -> str:
    return f"/api/v1/scans/{scan.pk}/tiles/scan_files/{level}/{col}_{row}.jpeg"


def forget_tile(scan, level: int, col: int, row: int) -> str:
    """Remove the tile from the shared cache (it outlives test runs) and return its key."""
    key = tiles.tile_cache_key(scan, level, col, row)
    caches[settings.TILE_CACHE_ALIAS].delete(key)
    return key


def png_chunk_types(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        found.append(data[offset + 4 : offset + 8].decode("ascii"))
        offset += 12 + length
    return found


def body(response) -> bytes:
    """The whole body; reading a file response to the end closes it (through the test client)."""
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_dzi_descriptor_gives_the_scans_size_and_tiling(member, scan):
    response = member.get(f"/api/v1/scans/{scan.pk}/tiles/scan.dzi")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/xml")
    assert "private" in response["Cache-Control"]
    image = ET.fromstring(response.content)
    assert image.tag == f"{DZ_NAMESPACE}Image"
    assert image.get("TileSize") == "256" and image.get("Overlap") == "0"
    assert image.get("Format") == "jpeg"
    size = image.find(f"{DZ_NAMESPACE}Size")
    assert (size.get("Width"), size.get("Height")) == ("3000", "2400")


@pytest.mark.parametrize(("level", "col", "row"), [(12, 0, 0), (12, 11, 9), (11, 5, 4), (0, 0, 0)])
def test_a_tile_is_a_jpeg_of_the_pyramids_size_with_private_validators(
    member, scan, reference, level, col, row
):
    _, deep_zoom = reference
    forget_tile(scan, level, col, row)
    response = member.get(tile_url(scan, level, col, row))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "JPEG"
        assert image.size == deep_zoom.get_tile_dimensions(level, (col, row))
    cache_control = response["Cache-Control"]
    assert "private" in cache_control and "public" not in cache_control
    assert "max-age=" in cache_control
    etag = response["ETag"]
    assert etag.startswith('"') and etag.endswith('"')

    again = member.get(tile_url(scan, level, col, row), HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    assert "private" in again["Cache-Control"]


def test_the_top_level_is_the_scan_at_full_resolution(member, scan, reference):
    _, deep_zoom = reference
    top = deep_zoom.level_count - 1
    assert deep_zoom.level_tiles[top] == (12, 10)
    forget_tile(scan, top, 11, 9)
    response = member.get(tile_url(scan, top, 11, 9))
    with Image.open(io.BytesIO(response.content)) as image:
        # The last column and row: what is left of 3000 x 2400 after 11 and 9 full tiles.
        assert image.size == (3000 - 11 * 256, 2400 - 9 * 256)


@pytest.mark.parametrize(
    ("level", "col", "row", "message"),
    [
        (13, 0, 0, "Level 13 does not exist (0 to 12)"),
        (99, 0, 0, "Level 99 does not exist"),
        (12, 12, 0, "Tile 12_0 is outside level 12, which has 12 x 10 tiles"),
        (12, 0, 10, "Tile 0_10 is outside level 12, which has 12 x 10 tiles"),
        (0, 1, 0, "Tile 1_0 is outside level 0, which has 1 x 1 tiles"),
    ],
)
def test_tiles_outside_the_pyramid_are_404_json_naming_the_problem(
    member, scan, level, col, row, message
):
    key = forget_tile(scan, level, col, row)
    response = member.get(tile_url(scan, level, col, row))
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert message in response.json()["detail"]
    assert caches[settings.TILE_CACHE_ALIAS].get(key) is None


def test_a_tile_is_encoded_once_and_then_served_from_the_shared_cache(member, scan):
    key = forget_tile(scan, 12, 3, 2)
    cache = caches[settings.TILE_CACHE_ALIAS]
    first = member.get(tile_url(scan, 12, 3, 2))
    assert first.status_code == 200
    assert cache.get(key) == first.content
    # With the slide closed and its file gone, only the cache can answer.
    tiles.slide_handles.clear()
    stored = Path(scan.file.path)
    shutil.move(stored, stored.with_suffix(".away"))
    try:
        second = member.get(tile_url(scan, 12, 3, 2))
    finally:
        shutil.move(stored.with_suffix(".away"), stored)
    assert second.status_code == 200
    assert second.content == first.content
    assert second["ETag"] == first["ETag"]


def test_permission_is_checked_before_the_cache(member, scan, outsider, annotator):
    forget_tile(scan, 12, 1, 1)
    warm = member.get(tile_url(scan, 12, 1, 1))
    assert warm.status_code == 200
    assert caches[settings.TILE_CACHE_ALIAS].get(tiles.tile_cache_key(scan, 12, 1, 1))

    stranger = Client()
    stranger.force_login(outsider)
    refused = stranger.get(tile_url(scan, 12, 1, 1))
    assert refused.status_code == 404
    assert f"No scan {scan.pk}" in refused.json()["detail"]
    # Knowing the validator does not help either: no 304 for someone who may not see the scan.
    guessed = stranger.get(tile_url(scan, 12, 1, 1), HTTP_IF_NONE_MATCH=warm["ETag"])
    assert guessed.status_code == 404
    assert stranger.get(f"/api/v1/scans/{scan.pk}/tiles/scan.dzi").status_code == 404

    anonymous = Client().get(tile_url(scan, 12, 1, 1))
    assert anonymous.status_code == 401 and "Log in" in anonymous.json()["detail"]
    assert Client().get(f"/api/v1/scans/{scan.pk}/tiles/scan.dzi").status_code == 401
    bad_token = Client().get(tile_url(scan, 12, 1, 1), HTTP_AUTHORIZATION="Token nonsense")
    assert bad_token.status_code == 401

    token = Token.objects.create(user=annotator)
    by_token = Client().get(tile_url(scan, 12, 1, 1), HTTP_AUTHORIZATION=f"Token {token.key}")
    assert by_token.status_code == 200 and by_token.content == warm.content
    outsider_token = Token.objects.create(user=outsider)
    assert (
        Client()
        .get(tile_url(scan, 12, 1, 1), HTTP_AUTHORIZATION=f"Token {outsider_token.key}")
        .status_code
        == 404
    )


def test_the_cache_key_and_etag_follow_the_files_checksum(member, scan, second_scan):
    assert scan.sha256 != second_scan.sha256
    keys = [forget_tile(s, 12, 2, 2) for s in (scan, second_scan)]
    assert keys[0] != keys[1]
    assert scan.sha256 in keys[0] and second_scan.sha256 in keys[1]
    first = member.get(tile_url(scan, 12, 2, 2))
    second = member.get(tile_url(second_scan, 12, 2, 2))
    assert first.status_code == second.status_code == 200
    assert first.content != second.content
    assert first["ETag"] != second["ETag"]
    cache = caches[settings.TILE_CACHE_ALIAS]
    assert cache.get(keys[0]) == first.content and cache.get(keys[1]) == second.content


def test_slide_handles_keep_at_most_capacity_open_and_close_what_they_evict(scan, second_scan):
    handles = tiles.SlideHandles(capacity=1)
    try:
        first = handles.get(scan)
        assert handles.get(scan) is first
        assert first.slide.dimensions == (3000, 2400)
        second = handles.get(second_scan)
        assert len(handles) == 1
        with pytest.raises(Exception, match="closed slide"):
            first.slide.dimensions  # noqa: B018
        assert second.slide.dimensions == (3000, 2400)
        reopened = handles.get(scan)
        assert reopened is not first and reopened.slide.dimensions == (3000, 2400)
        assert len(handles) == 1
        with pytest.raises(Exception, match="closed slide"):
            second.slide.dimensions  # noqa: B018
    finally:
        handles.clear()
    assert len(handles) == 0


def make_cell(study, scan, user, x: int, y: int) -> Cell:
    return Cell.objects.create(study=study, scan=scan, x=x, y=y, created_by=user)


def patch_url(cell: Cell) -> str:
    return f"/api/v1/cells/{cell.pk}/patch.png"


def leftover_parts() -> list[Path]:
    return list(Path(settings.MEDIA_ROOT).rglob("*.part"))


def test_a_central_cells_patch_is_the_studys_square_of_level_0(
    member, study, scan, annotator, reference
):
    slide, _ = reference
    cell = make_cell(study, scan, annotator, 1500, 1200)
    response = member.get(patch_url(cell))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Patch-Size"] == "400x400"
    assert response["X-Patch-Padded"] == "false"
    assert response["X-Patch-Padding"] == "left=0, top=0, right=0, bottom=0"
    assert "private" in response["Cache-Control"]
    data = body(response)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (400, 400)
        expected = slide.read_region((1300, 1000), 0, (400, 400)).convert("RGB")
        assert image.convert("RGB").tobytes() == expected.tobytes()

    cell.refresh_from_db()
    assert cell.cut_patch and default_storage.exists(cell.cut_patch)
    with default_storage.open(cell.cut_patch, "rb") as stored:
        assert stored.read() == data
    assert leftover_parts() == []


@pytest.mark.parametrize(
    ("x", "y", "padding", "inner"),
    [
        (5, 100, (195, 100, 0, 0), (0, 0, 205, 300)),
        (2999, 2399, (0, 0, 199, 199), (2799, 2199, 201, 201)),
    ],
)
def test_a_patch_at_the_edge_is_padded_with_the_background_and_says_so(
    member, study, scan, annotator, reference, x, y, padding, inner
):
    slide, _ = reference
    cell = make_cell(study, scan, annotator, x, y)
    response = member.get(patch_url(cell))
    assert response.status_code == 200
    left, top, right, bottom = padding
    assert response["X-Patch-Padded"] == "true"
    assert response["X-Patch-Padding"] == f"left={left}, top={top}, right={right}, bottom={bottom}"
    assert response["X-Patch-Background"] == "#ffffff"
    with Image.open(io.BytesIO(body(response))) as png:
        image = png.convert("RGB")
    assert image.size == (400, 400)
    scan_x, scan_y, width, height = inner
    real = image.crop((left, top, left + width, top + height))
    expected = slide.read_region((scan_x, scan_y), 0, (width, height)).convert("RGB")
    assert real.tobytes() == expected.tobytes()
    filler = {
        image.getpixel((px, py))
        for px in range(400)
        for py in range(400)
        if not (left <= px < left + width and top <= py < top + height)
    }
    assert filler == {(255, 255, 255)}


def test_the_padding_takes_the_configured_background(
    member, study, scan, annotator, reference, settings
):
    settings.PATCH_BACKGROUND = "#20c040"
    cell = make_cell(study, scan, annotator, 5, 100)
    response = member.get(patch_url(cell))
    assert response["X-Patch-Background"] == "#20c040"
    with Image.open(io.BytesIO(body(response))) as png:
        image = png.convert("RGB")
    assert image.getpixel((0, 0)) == image.getpixel((194, 399)) == ImageColor.getrgb("#20c040")
    assert image.getpixel((195, 100)) != ImageColor.getrgb("#20c040")


def test_a_patch_size_in_micrometres_follows_the_scans_resolution(member, study, scan, annotator):
    study.patch_size_um = 10.0
    study.save()
    side = round(10.0 / scan.mpp_x)
    assert side == 138
    cell = make_cell(study, scan, annotator, 1500, 1200)
    response = member.get(patch_url(cell))
    assert response["X-Patch-Size"] == f"{side}x{side}"
    with Image.open(io.BytesIO(body(response))) as image:
        assert image.size == (side, side)


def test_a_patch_carries_no_metadata(member, study, scan, annotator):
    cell = make_cell(study, scan, annotator, 700, 800)
    data = body(member.get(patch_url(cell)))
    with Image.open(io.BytesIO(data)) as image:
        assert image.text == {}
        assert not set(image.info) & {"exif", "icc_profile", "xmp", "dpi", "comment"}
    assert set(png_chunk_types(data)) <= {"IHDR", "PLTE", "IDAT", "IEND"}


def test_a_moved_cell_gets_a_new_patch_and_the_old_one_stays(
    member, study, scan, annotator, reference
):
    slide, _ = reference
    cell = make_cell(study, scan, annotator, 1500, 1200)
    before = member.get(patch_url(cell))
    old_bytes = body(before)
    again = member.get(patch_url(cell), HTTP_IF_NONE_MATCH=before["ETag"])
    assert again.status_code == 304 and again.content == b""
    cell.refresh_from_db()
    old_name = cell.cut_patch

    moved = client_for(annotator).patch(
        f"/api/v1/cells/{cell.pk}/", {"x": 1600, "y": 1250, "version": 1}, format="json"
    )
    assert moved.status_code == 200, moved.json()
    after = member.get(patch_url(cell), HTTP_IF_NONE_MATCH=before["ETag"])
    assert after.status_code == 200
    assert after["ETag"] != before["ETag"]
    new_bytes = body(after)
    assert new_bytes != old_bytes
    with Image.open(io.BytesIO(new_bytes)) as image:
        expected = slide.read_region((1400, 1050), 0, (400, 400)).convert("RGB")
        assert image.convert("RGB").tobytes() == expected.tobytes()
    cell.refresh_from_db()
    assert cell.cut_patch != old_name
    assert default_storage.exists(cell.cut_patch)
    with default_storage.open(old_name, "rb") as old:
        assert old.read() == old_bytes
    assert leftover_parts() == []


def test_patches_are_only_for_members(study, scan, annotator, outsider):
    cell = make_cell(study, scan, annotator, 1500, 1200)
    stranger = Client()
    stranger.force_login(outsider)
    refused = stranger.get(patch_url(cell))
    assert refused.status_code == 404
    assert f"No cell {cell.pk}" in refused.json()["detail"]
    anonymous = Client().get(patch_url(cell))
    assert anonymous.status_code == 401
    # Nothing was cut for requests that were refused.
    cell.refresh_from_db()
    assert cell.cut_patch == ""
    assert not (Path(settings.MEDIA_ROOT) / "patches").exists()
    token = Token.objects.create(user=annotator)
    by_token = Client().get(patch_url(cell), HTTP_AUTHORIZATION=f"Token {token.key}")
    assert by_token.status_code == 200 and by_token["X-Patch-Size"] == "400x400"
    assert body(by_token).startswith(b"\x89PNG")
    assert Client().get("/api/v1/cells/999999999/patch.png").status_code == 401


def test_the_scan_around_a_cell_is_four_patch_sides_with_the_patch_outlined(
    member, study, scan, annotator, reference, outsider
):
    slide, _ = reference
    cell = make_cell(study, scan, annotator, 1500, 1200)
    response = member.get(f"/api/v1/cells/{cell.pk}/context.png")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(body(response))) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape == (600, 600, 3)
    # The outline sits where the patch's edge falls (the middle quarter of the side) ...
    assert tuple(pixels[300, 225]) == (255, 214, 0) and tuple(pixels[225, 300]) == (255, 214, 0)
    # ... and the rest is the scan, four patch sides (1,600 px) around the cell, scaled down.
    expected = np.asarray(
        slide.read_region((700, 400), 0, (1600, 1600)).convert("RGB").resize((600, 600))
    ).astype(int)
    assert np.abs(pixels[:200, :200] - expected[:200, :200]).mean() < 8
    patch_only = Cell.objects.create(study=study, external_id="loose.png", created_by=annotator)
    refused = member.get(f"/api/v1/cells/{patch_only.pk}/context.png")
    assert refused.status_code == 404 and "only a patch" in refused.json()["detail"]
    stranger = Client()
    stranger.force_login(outsider)
    assert stranger.get(f"/api/v1/cells/{cell.pk}/context.png").status_code == 404
    assert Client().get(f"/api/v1/cells/{cell.pk}/context.png").status_code == 401


def test_a_photos_tiles_asked_for_at_once_all_come(study, coordinator, tmp_path):
    """The viewer asks for a screenful of tiles at once; a photo is decoded when it is opened,
    not by the first requests together (Pillow's lazy decode is not thread-safe)."""
    path = tmp_path / "field_of_view.png"
    Image.frombytes("RGB", (1600, 1200), random.Random(3).randbytes(1600 * 1200 * 3)).save(path)
    photo = ingest_scan(path, study=study, user=coordinator, check_roots=False).scan
    assert photo.kind == photo.Kind.PHOTO
    tiles.slide_handles.clear()
    wanted = [(col, row) for col in range(6) for row in range(4)]
    top = 11  # 1600 px wide: levels 0 to 11, the top one at full size in 7 x 5 tiles
    for col, row in wanted:
        forget_tile(photo, top, col, row)
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda place: tiles.tile_jpeg(photo, top, *place), wanted))
    deep_zoom = tiles.slide_handles.get(photo).deep_zoom
    assert deep_zoom.level_count == top + 1
    for data, place in zip(made, wanted, strict=True):
        with Image.open(io.BytesIO(data)) as tile:
            assert tile.format == "JPEG"
            assert tile.size == deep_zoom.get_tile_dimensions(top, place)
