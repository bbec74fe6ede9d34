"""Checking a scan costs what the file is, not what it claims.

Each crafted file below is under about a megabyte and claims far more: a single 16,640 x 16,640
px level, tiles of 8,192 px, a 12,000 x 12,000 px photograph. The check runs in a fresh Python
process so that its peak resident memory can be measured; each must finish within seconds and
grow that peak by less than CHECK_MEMORY_MB, refused with a reason or accepted.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from django.core.files.uploadedfile import SimpleUploadedFile

from annotator.models import Scan
from annotator.scans import ScanError, inspect_slide
from annotator.synthetic import make_synthetic_scan

from .conftest import SHARED_DATA, client_for

REPO = Path(__file__).resolve().parent.parent
CHECK_MEMORY_MB = 64
CHECK_SECONDS = 3.0

# The peak comes from /proc (VmHWM, per address space): getrusage's ru_maxrss would carry over
# the peak of the pytest process that started this one.
MEASURE = """
import json, re, sys, time
from pathlib import Path
import django
django.setup()
from annotator.scans import ScanError, inspect_slide
def peak_kib():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
before = peak_kib()
start = time.perf_counter()
try:
    inspect_slide(Path(sys.argv[1]), "crafted")
    verdict = "accepted"
except ScanError as exc:
    verdict = str(exc)
seconds = time.perf_counter() - start
growth_mb = (peak_kib() - before) / 1024
print(json.dumps({"verdict": verdict, "seconds": seconds, "growth_mb": growth_mb}))
"""


def claimed_tiff(path: Path, levels, tile: int = 256, data: bytes | None = None) -> Path:
    """A tiled TIFF of the given level sizes whose every tile is the same few stored bytes."""
    if data is None:
        data = zlib.compress(np.full((tile, tile, 3), 230, np.uint8).tobytes(), 9)
    with tifffile.TiffWriter(path) as tiff:
        for index, (width, height) in enumerate(levels):
            count = -(-width // tile) * -(-height // tile)
            tiff.write(
                iter([data] * count),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="zlib",
                photometric="rgb",
                subfiletype=1 if index else 0,
            )
    return path


def claimed_png(path: Path, width: int, height: int) -> Path:
    """A PNG header claiming width x height RGB pixels, followed by almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1000)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


SINGLE_LEVEL = [(16640, 16640)]
PYRAMID = [(16640, 16640), (4160, 4160), (1040, 1040)]


def measure_check(path: Path) -> dict:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("make", "verdict"),
    [
        (lambda folder: claimed_tiff(folder / "flat.tiff", SINGLE_LEVEL), "no pyramid"),
        (lambda folder: claimed_tiff(folder / "pyramid.tiff", PYRAMID), "accepted"),
        (
            lambda folder: claimed_tiff(folder / "tile.tiff", [(300, 300)], 8192, b"x" * 100),
            "tiles of 8192x8192 px",
        ),
        (lambda folder: claimed_png(folder / "photo.png", 12000, 12000), "too large"),
    ],
    ids=["single-level", "pyramid", "huge-tiles", "huge-photo"],
)
def test_checking_a_file_costs_bounded_time_and_memory_whatever_it_claims(tmp_path, make, verdict):
    path = make(tmp_path)
    assert path.stat().st_size < 1_100_000
    measured = measure_check(path)
    assert verdict in measured["verdict"], measured
    assert measured["seconds"] < CHECK_SECONDS, measured
    assert measured["growth_mb"] < CHECK_MEMORY_MB, measured


def test_a_truncated_tiff_is_refused_as_truncated(tmp_path):
    whole = claimed_tiff(tmp_path / "whole.tiff", PYRAMID).read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(ScanError, match=r"cut: truncated file: .* the file has only [\d,]+ bytes"):
        inspect_slide(cut, "cut")


def test_an_upload_claiming_a_huge_size_is_refused_quickly_and_leaves_nothing(
    study, coordinator, tmp_path, settings
):
    path = claimed_tiff(tmp_path / "flat.tiff", SINGLE_LEVEL)
    upload = SimpleUploadedFile("flat.tiff", path.read_bytes())
    client = client_for(coordinator)
    client.get("/api/v1/scans/")  # the first request of a process loads the URLs and views
    start = time.perf_counter()
    response = client.post(
        "/api/v1/scans/", {"study": study.name, "file": upload}, format="multipart"
    )
    assert time.perf_counter() - start < CHECK_SECONDS
    assert response.status_code == 400
    assert "flat.tiff: no pyramid" in response.json()["file"][0]
    assert Scan.objects.count() == 0
    assert not (Path(settings.MEDIA_ROOT) / "scans").exists()


def test_a_scan_cut_to_its_first_100_kb_is_refused_as_truncated(tmp_path):
    """A real-sized upload that broke off early: the reason says truncated, not "too large"."""
    make_synthetic_scan(tmp_path / "whole.tiff", width=2000, height=2000, cells=5, seed=3)
    cut = tmp_path / "cut.tiff"
    cut.write_bytes((tmp_path / "whole.tiff").read_bytes()[:100_000])
    with pytest.raises(ScanError, match=r"cut.tiff: truncated file: .* only 100,000 bytes"):
        inspect_slide(cut, "cut.tiff")


def test_a_tiff_cut_before_its_smaller_levels_is_refused_as_truncated(tmp_path):
    """Cut in half, boxes.tiff still holds its first level whole; its other levels are gone."""
    whole = (SHARED_DATA / "openslide-fixtures" / "boxes.tiff").read_bytes()
    cut = tmp_path / "boxes.tiff"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ScanError, match=r"boxes.tiff: truncated file: its next image directory"):
        inspect_slide(cut, "boxes.tiff")
