"""Synthetic smear scans: OpenSlide reads them, they are reproducible, the manifest is true
to the pixels (leukocytes and distractors), each scan has its own style, and a series reuses
finished scans and never leaves half-written ones."""

from __future__ import annotations

import json
import math
from collections import Counter
from io import StringIO
from itertools import combinations
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from annotator import synthetic
from annotator.synthetic import (
    AML_LEAF_CODES,
    EDGE_MARGIN_PX,
    make_synthetic_scan,
    make_synthetic_scans,
    resolution_tags,
    scan_seed,
)

WIDTH, HEIGHT, CELLS = 3000, 2500, 20
SMALL = {"width": WIDTH, "height": HEIGHT, "cells": CELLS}


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("scan") / "smear.tiff"
    return path, make_synthetic_scan(path, seed=11, **SMALL)


def read_rgb(path: Path) -> np.ndarray:
    with openslide.OpenSlide(path) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"), float)


def test_openslide_reads_a_pyramid_of_halvings(scan):
    path, _ = scan
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_count > 1
        assert slide.dimensions == (WIDTH, HEIGHT)
        for level, (width, height) in enumerate(slide.level_dimensions):
            assert (width, height) == (math.ceil(WIDTH / 2**level), math.ceil(HEIGHT / 2**level))
        assert min(slide.level_dimensions[-1]) <= 1000 < min(slide.level_dimensions[-2])


def test_openslide_reports_the_requested_microns_per_pixel(scan):
    path, manifest = scan
    with openslide.OpenSlide(path) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.0725
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == 0.0725
    assert manifest["mpp"] == 0.0725


@pytest.mark.parametrize("mpp", [0.0725, 0.25, 0.1, 0.2278, 0.073, 0.07250001, 0.33333333, 12.5])
def test_resolution_tags_read_back_as_mpp_the_way_openslide_computes_it(mpp):
    unit, (numerator, denominator) = resolution_tags(mpp)
    microns_per_unit = {"CENTIMETER": 10000.0, "INCH": 25400.0}[unit]
    assert numerator < 2**32 and denominator < 2**32
    assert microns_per_unit / (numerator / denominator) == pytest.approx(mpp, rel=1e-12)


def test_other_mpp_is_reported_exactly(tmp_path):
    path = tmp_path / "coarse.tiff"
    make_synthetic_scan(path, width=1200, height=1100, cells=2, seed=1, mpp=0.25)
    with openslide.OpenSlide(path) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == 0.25


def test_tiff_is_jpeg_tiled_reduced_levels_flagged_and_undated(scan):
    path, _ = scan
    with tifffile.TiffFile(path) as tiff:
        assert len(tiff.pages) > 1
        for index, page in enumerate(tiff.pages):
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert "DateTime" not in page.tags
            assert bool(page.subfiletype & tifffile.FILETYPE.REDUCEDIMAGE) == (index > 0)


def test_manifest_is_written_beside_the_tiff_and_returned(scan):
    path, manifest = scan
    stored = json.loads(path.with_suffix(".json").read_text())
    assert stored == manifest
    assert manifest["file"] == path.name
    assert (manifest["width"], manifest["height"], manifest["seed"]) == (WIDTH, HEIGHT, 11)
    assert manifest["generator"] == "cytomark-synthetic-2"
    assert manifest["bytes"] == path.stat().st_size
    assert len(manifest["cells"]) == CELLS
    assert all(set(cell) == {"x", "y", "code", "radius"} for cell in manifest["cells"])
    assert all(set(spot) == {"kind", "x", "y", "radius"} for spot in manifest["distractors"])
    assert set(manifest["style"]) == {"stain", "eosin", "touching_share", "feathered_edge"}


def test_every_kind_of_distractor_is_planted_inside_the_scan_clear_of_leukocytes(scan):
    _, manifest = scan
    kinds = Counter(spot["kind"] for spot in manifest["distractors"])
    assert set(kinds) == set(synthetic.DISTRACTORS_PER_MM2)
    assert min(kinds.values()) >= synthetic.MIN_DISTRACTORS_PER_KIND
    clearance = synthetic.DISTRACTOR_CLEARANCE_UM / manifest["mpp"]
    for spot in manifest["distractors"]:
        assert EDGE_MARGIN_PX <= spot["x"] <= WIDTH - EDGE_MARGIN_PX
        assert EDGE_MARGIN_PX <= spot["y"] <= HEIGHT - EDGE_MARGIN_PX
        for cell in manifest["cells"]:
            distance = math.hypot(spot["x"] - cell["x"], spot["y"] - cell["y"])
            assert distance >= spot["radius"] + cell["radius"] + clearance


def test_distractors_are_drawn_where_the_manifest_says(scan):
    """Clumps and precipitate are stained specks (a dark pixel near the centre); overlapping red
    cells are redder than a single red cell's rim."""
    path, manifest = scan
    pixels = read_rgb(path)
    for spot in manifest["distractors"]:
        half = spot["radius"]
        box = pixels[spot["y"] - half : spot["y"] + half, spot["x"] - half : spot["x"] + half]
        if spot["kind"] == "overlapping_red_cells":
            assert (box[..., 1] < 110).mean() > 0.05, spot
        else:
            assert box.sum(axis=2).min() < 450, spot


def test_scans_vary_in_stain_and_layout_by_seed(tmp_path):
    styles = [
        synthetic.render_scan(width=1200, height=1100, cells=2, seed=seed)[0]["style"]
        for seed in (1, 2, 3)
    ]
    for name, (low, high) in [
        ("stain", synthetic.STAIN_INTENSITY),
        ("touching_share", synthetic.TOUCHING_SHARE),
        ("feathered_edge", synthetic.FEATHERED_EDGE),
    ]:
        values = [style[name] for style in styles]
        assert all(low <= value <= high for value in values)
        assert len(set(values)) == 3


def test_touching_leukocytes_are_planted_when_the_scan_asks_for_them():
    rng = np.random.default_rng(4)
    cells = synthetic.plant_leukocytes(
        4000, 4000, 40, 0.0725, AML_LEAF_CODES, rng, touching_share=1.0
    )
    touching = sum(
        math.hypot(a["x"] - b["x"], a["y"] - b["y"]) < a["radius"] + b["radius"] + 20
        for a, b in combinations(cells, 2)
    )
    assert touching >= 20


def test_same_arguments_give_identical_bytes_and_another_seed_differs(scan, tmp_path):
    path, manifest = scan
    again = tmp_path / path.name
    assert make_synthetic_scan(again, seed=11, **SMALL) == manifest
    assert again.read_bytes() == path.read_bytes()
    assert again.with_suffix(".json").read_bytes() == path.with_suffix(".json").read_bytes()

    other = tmp_path / "other.tiff"
    other_manifest = make_synthetic_scan(other, seed=12, **SMALL)
    assert other.read_bytes() != path.read_bytes()
    assert other_manifest["cells"] != manifest["cells"]


def test_every_class_appears_and_classes_cycle_evenly(scan):
    _, manifest = scan
    counts = Counter(cell["code"] for cell in manifest["cells"])
    assert set(counts) == set(AML_LEAF_CODES)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_unknown_codes_are_drawn_as_generic_leukocytes(tmp_path):
    path = tmp_path / "other-taxonomy.tiff"
    manifest = make_synthetic_scan(
        path, width=1600, height=1400, cells=4, seed=3, codes=("neutrophil", "XYZ")
    )
    assert Counter(cell["code"] for cell in manifest["cells"]) == {"neutrophil": 2, "XYZ": 2}
    pixels = read_rgb(path)
    for cell in manifest["cells"]:
        centre = pixels[cell["y"] - 10 : cell["y"] + 10, cell["x"] - 10 : cell["x"] + 10]
        assert centre.mean() < pixels.mean() - 40


def test_planted_cells_keep_the_margin_and_do_not_overlap(scan):
    _, manifest = scan
    for cell in manifest["cells"]:
        assert EDGE_MARGIN_PX <= cell["x"] <= WIDTH - EDGE_MARGIN_PX
        assert EDGE_MARGIN_PX <= cell["y"] <= HEIGHT - EDGE_MARGIN_PX
        assert 50 <= cell["radius"] <= 150
    for first, second in combinations(manifest["cells"], 2):
        distance = math.hypot(first["x"] - second["x"], first["y"] - second["y"])
        assert distance >= first["radius"] + second["radius"]


def test_leukocytes_are_drawn_where_the_manifest_says(scan):
    """The box around each planted centre is stained (darker, or purple); boxes away from
    every planted cell, over background and red cells only, are not purple."""
    path, manifest = scan
    pixels = read_rgb(path)
    mean = pixels.mean(axis=(0, 1))

    def darkness_and_purpleness(x: int, y: int, half: int) -> tuple[float, float]:
        box = pixels[y - half : y + half, x - half : x + half].mean(axis=(0, 1))
        return mean.mean() - box.mean(), (box[2] - box[1]) - (mean[2] - mean[1])

    for cell in manifest["cells"]:
        darker, purpler = darkness_and_purpleness(cell["x"], cell["y"], cell["radius"] // 2)
        assert purpler >= 20 or darker >= 50, cell

    rng = np.random.default_rng(0)
    checked = 0
    planted = manifest["cells"] + manifest["distractors"]
    while checked < 200:
        x, y = int(rng.integers(60, WIDTH - 60)), int(rng.integers(60, HEIGHT - 60))
        if all(math.hypot(x - c["x"], y - c["y"]) > c["radius"] + 90 for c in planted):
            darker, purpler = darkness_and_purpleness(x, y, 50)
            assert purpler < 15 and darker < 50, (x, y)
            checked += 1


def test_red_cells_cover_a_monolayer_share_of_the_background(scan):
    path, _ = scan
    pixels = read_rgb(path)
    reddish = (pixels[..., 0] - pixels[..., 1]) > 25
    assert 0.3 < reddish.mean() < 0.6


def test_too_many_cells_for_the_area_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="cannot fit"):
        make_synthetic_scan(tmp_path / "tiny.tiff", width=700, height=700, cells=5, seed=1)
    assert list(tmp_path.iterdir()) == []


def test_series_names_scans_and_matches_single_scans(tmp_path):
    made = make_synthetic_scans(tmp_path, count=2, seed=5, **SMALL)
    assert [Path(scan["path"]).name for scan in made] == [
        "synthetic_000.tiff",
        "synthetic_001.tiff",
    ]
    assert [scan["reused"] for scan in made] == [False, False]
    assert made[0]["seed"] != made[1]["seed"]
    single = tmp_path / "single" / "synthetic_001.tiff"
    single.parent.mkdir()
    make_synthetic_scan(single, seed=scan_seed(5, 1), **SMALL)
    assert single.read_bytes() == (tmp_path / "synthetic_001.tiff").read_bytes()


def test_series_reuses_finished_scans_without_rewriting(tmp_path):
    first = make_synthetic_scans(tmp_path, count=2, seed=5, **SMALL)
    files = sorted(tmp_path.iterdir())
    stamps = {path: path.stat().st_mtime_ns for path in files}

    second = make_synthetic_scans(tmp_path, count=2, seed=5, **SMALL)

    assert [scan["reused"] for scan in second] == [True, True]
    assert [{**scan, "reused": False} for scan in second] == first
    assert sorted(tmp_path.iterdir()) == files
    assert {path: path.stat().st_mtime_ns for path in files} == stamps


def test_series_remakes_scans_made_differently_or_incomplete(tmp_path):
    make_synthetic_scans(tmp_path, count=2, seed=5, **SMALL)
    truncated = tmp_path / "synthetic_001.tiff"
    truncated.write_bytes(truncated.read_bytes()[:1000])

    again = make_synthetic_scans(tmp_path, count=2, seed=5, **SMALL)
    assert [scan["reused"] for scan in again] == [True, False]
    assert truncated.stat().st_size == again[1]["bytes"]

    more_cells = make_synthetic_scans(tmp_path, count=1, seed=5, **{**SMALL, "cells": 19})
    assert more_cells[0]["reused"] is False and len(more_cells[0]["cells"]) == 19


def test_writes_leave_no_temporary_files(tmp_path):
    make_synthetic_scans(tmp_path, count=2, seed=5, **SMALL)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "synthetic_000.json",
        "synthetic_000.tiff",
        "synthetic_001.json",
        "synthetic_001.tiff",
    ]


def test_interrupted_write_leaves_neither_tiff_nor_manifest(tmp_path, monkeypatch):
    (old,) = make_synthetic_scans(tmp_path, count=1, seed=5, **SMALL)
    old_bytes = Path(old["path"]).read_bytes()

    def write_half_then_stop(path, levels, mpp, description):
        Path(path).write_bytes(b"II*\x00 half a tiff")
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_pyramid_tiff", write_half_then_stop)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_scans(tmp_path, count=1, seed=6, **SMALL)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["synthetic_000.tiff"]
    assert Path(old["path"]).read_bytes() == old_bytes
    monkeypatch.undo()
    (remade,) = make_synthetic_scans(tmp_path, count=1, seed=5, **SMALL)
    assert remade["reused"] is False


def test_command_prints_one_line_per_scan_and_reuses_on_a_second_run(tmp_path):
    from django.core.management import call_command

    arguments = ["--out", str(tmp_path), "--count", "2", "--cells", "18", "--seed", "4"]
    arguments += ["--width", "2000", "--height", "1800", "--mpp", "0.08"]
    first, second = StringIO(), StringIO()
    call_command("make_synthetic_scans", *arguments, stdout=first)
    call_command("make_synthetic_scans", *arguments, stdout=second)

    lines = first.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("2 scan(s) in ")
    assert str(tmp_path / "synthetic_000.tiff") in lines[0]
    assert all("2000 x 1800 px" in line and "18 cells" in line for line in lines[:2])
    assert [line.split()[-1] for line in lines[:2]] == ["made", "made"]
    assert [line.split()[-1] for line in second.getvalue().splitlines()[:2]] == ["reused"] * 2
    manifest = json.loads((tmp_path / "synthetic_001.json").read_text())
    assert (manifest["width"], manifest["height"], manifest["mpp"]) == (2000, 1800, 0.08)
