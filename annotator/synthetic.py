"""Synthetic whole-slide scans that look like a stained peripheral blood smear.

Demos and tests need slides without patient data. This module paints a smear at 100x oil
(pale background, a monolayer of red cells, platelets and leukocytes whose nuclei differ by
class), writes it as a pyramidal JPEG-tiled TIFF that OpenSlide's generic-tiff driver reads,
and records where each leukocyte was planted in a JSON manifest beside it.

So that a detector can be measured on them, scans also carry distractors that are not
leukocytes (platelet clumps, stain precipitate, overlapping red cells), recorded in the
manifest with their kind and centre, and each scan has its own stain intensity, share of
touching leukocytes and fall of leukocyte density away from the feathered edge, drawn from its
seed. Smudge cells (KSC) are leukocytes here, not distractors: the AML taxonomy has a leaf for
them and the examiner labels them, so a detector must find them.

Speed comes from stamping pre-rendered red-cell sprites into one uint8 array with integer
arithmetic, rendering only the few leukocytes individually, halving with Pillow and letting
tifffile encode JPEG tiles on several threads. Output is byte-identical for the same arguments.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

AML_LEAF_CODES: tuple[str, ...] = (
    "NGS",
    "NGB",
    "LYT",
    "LYA",
    "MON",
    "EOS",
    "BAS",
    "MYON",
    "MYOA",
    "PMON",
    "PMOA",
    "PMOF",
    "PMB",
    "MYB",
    "MMZ",
    "MOB",
    "EBO",
    "KSC",
)

GENERATOR = "cytomark-synthetic-2"
EDGE_MARGIN_PX = 250
TILE_PX = 256
JPEG_QUALITY = 82
SMALLEST_LEVEL_SIDE_PX = 1000
ENCODER_THREADS = 2  # the demo machine's cores; also used to halve pyramid levels

BACKGROUND_RGB = np.array([235.0, 228.0, 231.0], dtype=np.float32)
RED_CELL_DIAMETER_UM = (6.9, 7.9)
RED_CELL_AREA_FRACTION = 0.45
# Closest centre distance of two red cells, as a fraction of their radii summed: they touch
# and at most barely overlap, as in the monolayer.
RED_CELL_MIN_GAP = 0.9
PLATELETS_PER_RED_CELL = 1 / 18
LEUKOCYTE_GAP_PX = 40

# Per-scan variation, each drawn uniformly from its range by the scan's seed.
STAIN_INTENSITY = (0.75, 1.3)  # factor on the optical density of everything the stain colours
EOSIN_INTENSITY = (0.85, 1.15)  # the same for red cells
TOUCHING_SHARE = (0.05, 0.3)  # leukocytes placed touching one planted before
FEATHERED_EDGE = (0.0, 0.8)  # density fall from one side to the opposite one

# Distractors: not leukocytes, but stained or dark, which a careless detector would take for one.
DISTRACTORS_PER_MM2: dict[str, tuple[float, float]] = {
    "platelet_clump": (4.0, 12.0),
    "precipitate": (6.0, 16.0),
    "overlapping_red_cells": (10.0, 25.0),
}
DISTRACTOR_RADIUS_UM: dict[str, tuple[float, float]] = {
    "platelet_clump": (3.0, 5.5),
    "precipitate": (2.0, 5.0),
    "overlapping_red_cells": (6.0, 7.5),
}
MIN_DISTRACTORS_PER_KIND = 3
# Free space between a distractor and any leukocyte or other distractor, so that a proposal
# near one can be told from a proposal on its neighbour.
DISTRACTOR_CLEARANCE_UM = 12.0

_RED_CELL_SPRITES = 32
_PLATELET_SPRITES = 12
_BACKGROUND_TILE_PX = 1024
_STRIP_ROWS = 128
_UINT32_MAX = 0xFFFFFFFF
_MAX_RESOLUTION_DENOMINATOR = 50_000


def _optical_density(rgb: tuple[float, float, float]) -> np.ndarray:
    """Absorbance per channel of a stain that turns the background into ``rgb`` at density 1."""
    return -np.log(np.asarray(rgb, dtype=np.float32) / BACKGROUND_RGB)


OD_RED_CELL = _optical_density((212, 132, 140))
OD_PLATELET = _optical_density((150, 100, 170))
OD_PRECIPITATE = _optical_density((70, 48, 105))


# --- small numeric helpers -------------------------------------------------------------------


def _coverage(signed_distance: np.ndarray, softness: float = 1.0) -> np.ndarray:
    """Anti-aliased inside-fraction of a shape given its signed distance (negative inside)."""
    return np.clip(0.5 - signed_distance / softness, 0.0, 1.0)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _circle(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return np.hypot(x - cx, y - cy) - r


def _ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0
) -> np.ndarray:
    """Approximate signed distance to a rotated ellipse with semi-axes ``a`` and ``b``."""
    c, s = math.cos(angle), math.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return (np.hypot(u / a, v / b) - 1.0) * min(a, b)


def _capsule(
    x: np.ndarray, y: np.ndarray, ax: float, ay: float, bx: float, by: float, r: float
) -> np.ndarray:
    """Signed distance to a segment of thickness ``2 r`` (strands, rods)."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    return np.hypot(x - ax - t * dx, y - ay - t * dy) - r


def _smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two shapes with a fillet of size ``k`` where they meet."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _wobble(angle: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random radial wobble of a contour, as a relative radius change."""
    result = np.zeros_like(angle)
    for harmonic in range(2, 7):
        result += (
            (amplitude / harmonic)
            * rng.normal()
            * np.cos(harmonic * angle + rng.uniform(0, 2 * math.pi))
        )
    return result


def _value_noise(shape: tuple[int, int], scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in about [-1, 1] with features of roughly ``scale_px`` pixels."""
    rows = max(2, math.ceil(shape[0] / scale_px) + 2)
    cols = max(2, math.ceil(shape[1] / scale_px) + 2)
    coarse = rng.uniform(-1.0, 1.0, (rows, cols)).astype(np.float32)
    fine = Image.fromarray(coarse).resize(
        (shape[1], shape[0]), Image.Resampling.BICUBIC, box=(1, 1, cols - 1, rows - 1)
    )
    return np.asarray(fine, dtype=np.float32)


def _lattice_noise(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in [-1, 1] sampled at continuous coordinates (one feature per unit).

    Unlike ``_value_noise`` it follows any coordinate frame, so rotated or stretched
    coordinates give rotated or streaky texture.
    """
    u0, v0 = np.floor(u.min()), np.floor(v.min())
    cols = int(np.floor(u.max()) - u0) + 2
    rows = int(np.floor(v.max()) - v0) + 2
    lattice = rng.uniform(-1.0, 1.0, (rows, cols)).astype(np.float32)
    fu, fv = u - u0, v - v0
    iu = np.minimum(fu.astype(np.int64), cols - 2)
    iv = np.minimum(fv.astype(np.int64), rows - 2)
    tu = _smoothstep(0.0, 1.0, fu - iu)
    tv = _smoothstep(0.0, 1.0, fv - iv)
    top = lattice[iv, iu] + (lattice[iv, iu + 1] - lattice[iv, iu]) * tu
    bottom = lattice[iv + 1, iu] + (lattice[iv + 1, iu + 1] - lattice[iv + 1, iu]) * tu
    return top + (bottom - top) * tv


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array, edges zero-padded."""
    radius = max(1, math.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    kernel /= kernel.sum()
    padded = np.pad(image, radius)
    rows = sum(w * padded[:, i : i + image.shape[1]] for i, w in enumerate(kernel))
    return sum(w * rows[i : i + image.shape[0], :] for i, w in enumerate(kernel))


def _splat(shape: tuple[int, int], xs: np.ndarray, ys: np.ndarray, sigma: float) -> np.ndarray:
    """Density map of round granules centred at (xs, ys), each peaking near 1."""
    density = np.zeros(shape, dtype=np.float32)
    inside = (xs >= 0) & (ys >= 0) & (xs < shape[1]) & (ys < shape[0])
    np.add.at(density, (ys[inside].astype(int), xs[inside].astype(int)), 1.0)
    return _blur(density, sigma) * (2 * math.pi * sigma * sigma)


def _sample_inside(
    weights: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random sub-pixel positions drawn proportionally to ``weights`` (a 2-D mask)."""
    flat = weights.ravel().astype(np.float64)
    total = flat.sum()
    if count <= 0 or total <= 0:
        return np.empty(0), np.empty(0)
    picks = rng.choice(flat.size, size=count, p=flat / total)
    ys, xs = np.divmod(picks, weights.shape[1])
    return xs + rng.uniform(0, 1, count), ys + rng.uniform(0, 1, count)


# --- leukocytes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeukocyteLook:
    """How one leukocyte class is drawn: size, nucleus shape, stains and inclusions."""

    diameter_um: tuple[float, float]
    nucleus: str
    nucleus_rgb: tuple[float, float, float] = (95, 55, 140)
    chromatin_px: float = 4.0
    chromatin_contrast: float = 0.3
    cytoplasm_rgb: tuple[float, float, float] = (222, 202, 218)
    cytoplasm_alt_rgb: tuple[float, float, float] | None = None
    cytoplasm_texture: float = 0.1
    outline_wobble: float = 0.025
    edge_darkening: float = 0.0
    creases: int = 0
    granule_rgb: tuple[float, float, float] | None = None
    granule_sigma_um: float = 0.1
    granule_fill: float = 0.0
    granules_over_nucleus: float = 0.0
    nucleoli: tuple[int, int] = (0, 0)
    nucleolus_um: float = 0.6
    auer_rods: tuple[int, int] = (0, 0)
    rod_bundles: tuple[int, int] = (0, 0)
    vacuoles: tuple[int, int] = (0, 0)


_NEUTROPHIL_CYTOPLASM = (226, 204, 220)
_NEUTROPHIL_GRANULES = (196, 150, 190)
_BLAST_NUCLEUS = (122, 80, 162)
_AUER_ROD_RGB = (165, 45, 100)

LOOKS: dict[str, LeukocyteLook] = {
    "NGS": LeukocyteLook(
        (11.0, 13.5),
        "segmented",
        cytoplasm_rgb=_NEUTROPHIL_CYTOPLASM,
        granule_rgb=_NEUTROPHIL_GRANULES,
        granule_sigma_um=0.07,
        granule_fill=0.5,
    ),
    "NGB": LeukocyteLook(
        (11.0, 13.5),
        "band",
        cytoplasm_rgb=_NEUTROPHIL_CYTOPLASM,
        granule_rgb=_NEUTROPHIL_GRANULES,
        granule_sigma_um=0.07,
        granule_fill=0.5,
    ),
    "LYT": LeukocyteLook(
        (8.6, 9.8),
        "lymphocyte",
        nucleus_rgb=(70, 38, 112),
        chromatin_px=6.0,
        chromatin_contrast=0.35,
        cytoplasm_rgb=(166, 182, 222),
        edge_darkening=0.4,
    ),
    "LYA": LeukocyteLook(
        (12.5, 16.0),
        "indented",
        nucleus_rgb=(88, 50, 130),
        chromatin_px=5.0,
        cytoplasm_rgb=(180, 194, 228),
        outline_wobble=0.09,
        edge_darkening=1.2,
    ),
    "MON": LeukocyteLook(
        (14.0, 18.0),
        "folded",
        nucleus_rgb=(118, 82, 160),
        chromatin_px=3.5,
        chromatin_contrast=0.25,
        cytoplasm_rgb=(190, 190, 214),
        cytoplasm_texture=0.15,
        outline_wobble=0.05,
        creases=2,
        vacuoles=(0, 5),
    ),
    "EOS": LeukocyteLook(
        (12.0, 14.5),
        "bilobed",
        cytoplasm_rgb=(230, 214, 210),
        granule_rgb=(228, 128, 84),
        granule_sigma_um=0.17,
        granule_fill=1.6,
    ),
    "BAS": LeukocyteLook(
        (10.5, 12.5),
        "bilobed",
        nucleus_rgb=(125, 90, 160),
        cytoplasm_rgb=(214, 200, 224),
        granule_rgb=(45, 18, 70),
        granule_sigma_um=0.2,
        granule_fill=0.9,
        granules_over_nucleus=0.8,
    ),
    "MYON": LeukocyteLook(
        (13.5, 17.0),
        "blast",
        nucleus_rgb=_BLAST_NUCLEUS,
        chromatin_px=2.0,
        chromatin_contrast=0.12,
        cytoplasm_rgb=(132, 146, 200),
        nucleoli=(1, 3),
        nucleolus_um=0.8,
    ),
    "MYOA": LeukocyteLook(
        (13.5, 17.0),
        "blast",
        nucleus_rgb=_BLAST_NUCLEUS,
        chromatin_px=2.0,
        chromatin_contrast=0.12,
        cytoplasm_rgb=(132, 146, 200),
        nucleoli=(1, 3),
        nucleolus_um=0.8,
        auer_rods=(1, 2),
    ),
    "PMON": LeukocyteLook(
        (15.0, 19.0),
        "eccentric",
        nucleus_rgb=(112, 72, 155),
        chromatin_px=2.8,
        chromatin_contrast=0.15,
        cytoplasm_rgb=(178, 182, 220),
        granule_rgb=(105, 45, 135),
        granule_sigma_um=0.15,
        granule_fill=0.8,
        granules_over_nucleus=0.25,
        nucleoli=(0, 1),
    ),
    "PMOA": LeukocyteLook(
        (15.0, 19.0),
        "eccentric",
        nucleus_rgb=(112, 72, 155),
        chromatin_px=2.8,
        chromatin_contrast=0.15,
        cytoplasm_rgb=(178, 182, 220),
        granule_rgb=(105, 45, 135),
        granule_sigma_um=0.15,
        granule_fill=0.6,
        granules_over_nucleus=0.25,
        nucleoli=(0, 1),
        auer_rods=(2, 4),
    ),
    "PMOF": LeukocyteLook(
        (15.0, 19.0),
        "eccentric",
        nucleus_rgb=(112, 72, 155),
        chromatin_px=2.8,
        chromatin_contrast=0.15,
        cytoplasm_rgb=(178, 182, 220),
        granule_rgb=(105, 45, 135),
        granule_sigma_um=0.15,
        granule_fill=0.4,
        granules_over_nucleus=0.2,
        rod_bundles=(2, 3),
    ),
    "PMB": LeukocyteLook(
        (14.0, 17.5),
        "butterfly",
        nucleus_rgb=(105, 66, 150),
        chromatin_px=3.0,
        chromatin_contrast=0.2,
        cytoplasm_rgb=(200, 196, 222),
        granule_rgb=(120, 55, 140),
        granule_sigma_um=0.12,
        granule_fill=0.5,
        granules_over_nucleus=0.2,
    ),
    "MYB": LeukocyteLook(
        (12.5, 16.0),
        "myelocyte",
        nucleus_rgb=(100, 60, 145),
        chromatin_px=4.0,
        chromatin_contrast=0.25,
        cytoplasm_rgb=(226, 196, 206),
        granule_rgb=(200, 140, 170),
        granule_sigma_um=0.08,
        granule_fill=0.6,
    ),
    "MMZ": LeukocyteLook(
        (11.5, 14.0),
        "kidney",
        nucleus_rgb=(95, 55, 140),
        chromatin_px=5.0,
        cytoplasm_rgb=(228, 200, 210),
        granule_rgb=(205, 150, 180),
        granule_sigma_um=0.08,
        granule_fill=0.5,
    ),
    "MOB": LeukocyteLook(
        (16.5, 20.0),
        "monoblast",
        nucleus_rgb=(135, 98, 175),
        chromatin_px=2.0,
        chromatin_contrast=0.1,
        cytoplasm_rgb=(172, 178, 212),
        cytoplasm_texture=0.15,
        nucleoli=(1, 1),
        nucleolus_um=1.1,
        vacuoles=(0, 3),
    ),
    "EBO": LeukocyteLook(
        (8.8, 11.0),
        "erythroblast",
        nucleus_rgb=(50, 28, 85),
        chromatin_px=5.0,
        chromatin_contrast=0.2,
        cytoplasm_rgb=(176, 186, 216),
        cytoplasm_alt_rgb=(214, 182, 196),
    ),
    "KSC": LeukocyteLook(
        (11.0, 16.0),
        "smudge",
        nucleus_rgb=(150, 112, 182),
        chromatin_px=3.0,
        chromatin_contrast=0.45,
    ),
}
GENERIC_LOOK = LeukocyteLook((11.0, 14.0), "round", cytoplasm_rgb=(205, 198, 222))


def _segmented_nucleus(
    x: np.ndarray, y: np.ndarray, r: float, rng: np.random.Generator
) -> np.ndarray:
    """Three or four lobes along a curve, joined by thin chromatin strands."""
    lobes = int(rng.integers(3, 5))
    ring = r * rng.uniform(0.36, 0.44)
    step = rng.uniform(1.05, 1.35) if lobes == 3 else rng.uniform(0.85, 1.05)
    start = -step * (lobes - 1) / 2
    centres = [
        (
            ring * math.cos(start + i * step) + rng.normal(0, 0.04 * r),
            ring * math.sin(start + i * step) + rng.normal(0, 0.04 * r),
        )
        for i in range(lobes)
    ]
    shape = np.full_like(x, np.inf)
    for cx, cy in centres:
        lobe_r = r * rng.uniform(0.2, 0.25)
        lobe = _ellipse(x, y, cx, cy, lobe_r * 1.15, lobe_r * 0.9, rng.uniform(0, math.pi))
        shape = np.minimum(shape, lobe)
    strand_r = max(1.2, 0.025 * r)
    for (ax, ay), (bx, by) in itertools.pairwise(centres):
        shape = _smooth_union(shape, _capsule(x, y, ax, ay, bx, by, strand_r), 2.0)
    return shape


def _band_nucleus(x: np.ndarray, y: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """A C- or horseshoe-shaped band of even thickness, its ends slightly swollen."""
    arc_r = r * rng.uniform(0.4, 0.46)
    span = rng.uniform(3.6, 4.6)
    thickness = r * rng.uniform(0.15, 0.19)
    shape = np.full_like(x, np.inf)
    for t in np.linspace(0.0, 1.0, 32):
        angle = span * (t - 0.5)
        local = thickness * (0.85 + 0.6 * abs(t - 0.5))
        disc = _circle(x, y, arc_r * math.cos(angle), arc_r * math.sin(angle), local)
        shape = np.minimum(shape, disc)
    return shape


def _two_lobes(
    x: np.ndarray,
    y: np.ndarray,
    r: float,
    rng: np.random.Generator,
    *,
    spacing: tuple[float, float],
    lobe: tuple[float, float],
    bridge: tuple[float, float],
) -> np.ndarray:
    """Two round lobes, as fractions of the cell radius, joined by a bridge."""
    gap = r * rng.uniform(*spacing)
    lobe_r = r * rng.uniform(*lobe)
    tilt = rng.uniform(-0.4, 0.4)
    left = _ellipse(x, y, -gap, 0, lobe_r * 0.95, lobe_r * 1.1, tilt)
    right = _ellipse(x, y, gap, 0, lobe_r * 0.95, lobe_r * 1.1, -tilt)
    link = _capsule(x, y, -gap, 0, gap, 0, r * rng.uniform(*bridge))
    return _smooth_union(np.minimum(left, right), link, 0.06 * r)


def _bean(
    x: np.ndarray, y: np.ndarray, cx: float, a: float, b: float, bend: float, notch: float
) -> np.ndarray:
    """Kidney shape: an ellipse bent towards +y, with a rounded notch in its concave side."""
    u = (x - cx) / a
    bent = _ellipse(x, y - bend * b * u * u, cx, 0.0, a, b)
    hilum = _circle(x, y, cx, b * (1.0 - bend * 0.1) + notch, 2.2 * notch)
    return -_smooth_union(-bent, hilum, 0.6 * notch)


def _kidney_nucleus(
    x: np.ndarray,
    y: np.ndarray,
    r: float,
    rng: np.random.Generator,
    *,
    length: float,
    width: float,
    bend: float,
    notch: float,
    offset: float,
    wobble: float,
) -> np.ndarray:
    """A bean, more or less bent and notched, with a lumpy outline for folded nuclei."""
    bean = _bean(x, y, r * offset, r * length, r * width, bend, r * notch)
    return bean + r * _wobble(np.arctan2(y, x), wobble, rng)


def _round_nucleus(
    x: np.ndarray,
    y: np.ndarray,
    r: float,
    rng: np.random.Generator,
    *,
    scale: float = 0.55,
    eccentricity: float = 0.06,
    offset: float = 0.1,
) -> np.ndarray:
    """A round to oval nucleus, ``offset`` (fraction of the radius) away from the centre."""
    shape = _ellipse(x, y, r * offset, 0, r * scale * (1 + eccentricity), r * scale)
    return shape + r * scale * _wobble(np.arctan2(y, x), 0.015, rng)


NucleusShape = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]

NUCLEUS_SHAPES: dict[str, NucleusShape] = {
    "segmented": _segmented_nucleus,
    "band": _band_nucleus,
    "bilobed": functools.partial(
        _two_lobes, spacing=(0.28, 0.34), lobe=(0.26, 0.3), bridge=(0.03, 0.04)
    ),
    "butterfly": functools.partial(
        _two_lobes, spacing=(0.25, 0.3), lobe=(0.28, 0.32), bridge=(0.12, 0.16)
    ),
    "kidney": functools.partial(
        _kidney_nucleus, length=0.62, width=0.42, bend=0.35, notch=0.1, offset=0.12, wobble=0.02
    ),
    "folded": functools.partial(
        _kidney_nucleus, length=0.6, width=0.46, bend=0.45, notch=0.12, offset=0.06, wobble=0.05
    ),
    "indented": functools.partial(
        _kidney_nucleus, length=0.5, width=0.42, bend=0.25, notch=0.12, offset=0.22, wobble=0.03
    ),
    "lymphocyte": functools.partial(_round_nucleus, scale=0.8, eccentricity=0.04, offset=0.1),
    "blast": functools.partial(_round_nucleus, scale=0.74, eccentricity=0.07, offset=0.07),
    "monoblast": functools.partial(_round_nucleus, scale=0.62, eccentricity=0.1, offset=0.14),
    "eccentric": functools.partial(_round_nucleus, scale=0.54, eccentricity=0.1, offset=0.3),
    "myelocyte": functools.partial(_round_nucleus, scale=0.5, eccentricity=0.12, offset=0.32),
    "erythroblast": functools.partial(_round_nucleus, scale=0.56, eccentricity=0.02, offset=0.12),
    "round": _round_nucleus,
}


@dataclass(frozen=True)
class _Canvas:
    """Square grid a leukocyte is drawn on: pixel and cell-frame coordinates of each pixel."""

    px: np.ndarray  # pixel column, 0 at the left
    py: np.ndarray  # pixel row, 0 at the top
    x: np.ndarray  # cell frame: centred on the cell and turned by a random angle
    y: np.ndarray
    radius: float
    um: float  # pixels per micrometre

    @property
    def shape(self) -> tuple[int, int]:
        return self.px.shape


def _make_canvas(radius: int, mpp: float, rng: np.random.Generator) -> _Canvas:
    half = math.ceil(radius * 1.2) + 4
    axis = np.arange(-half, half + 1, dtype=np.float32)
    gx, gy = np.meshgrid(axis, axis)
    turn = rng.uniform(0, 2 * math.pi)
    x = gx * math.cos(turn) + gy * math.sin(turn)
    y = -gx * math.sin(turn) + gy * math.cos(turn)
    return _Canvas(gx + half, gy + half, x, y, float(radius), 1.0 / mpp)


def _pale_spots(
    canvas: _Canvas,
    where: np.ndarray,
    count: int,
    diameter_um: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Coverage of ``count`` round spots (nucleoli, vacuoles) placed where ``where`` is high."""
    spots = np.zeros(canvas.shape, dtype=np.float32)
    for _ in range(count):
        sx, sy = _sample_inside(where, 1, rng)
        if sx.size:
            radius = 0.5 * rng.uniform(*diameter_um) * canvas.um
            spot = _coverage(np.hypot(canvas.px - sx[0], canvas.py - sy[0]) - radius, 2.0)
            spots = np.maximum(spots, spot)
    return spots


def _granule_density(
    canvas: _Canvas, look: LeukocyteLook, where: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Granules packed into ``where`` as densely as the look's ``granule_fill`` asks."""
    sigma = max(0.7, look.granule_sigma_um * canvas.um)
    count = int(look.granule_fill * where.sum() / (math.pi * (2 * sigma) ** 2))
    xs, ys = _sample_inside(where, count, rng)
    return np.minimum(_splat(canvas.shape, xs, ys, sigma), 1.6)


def _rod(
    canvas: _Canvas, centre: tuple[float, float], angle: float, length: float, width: float
) -> np.ndarray:
    """Coverage of one thin rod of ``length`` centred on ``centre`` (pixel coordinates)."""
    dx, dy = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
    (cx, cy), px, py = centre, canvas.px, canvas.py
    return _coverage(_capsule(px, py, cx - dx, cy - dy, cx + dx, cy + dy, width), 1.2)


def _auer_rods(
    canvas: _Canvas, look: LeukocyteLook, where: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Single Auer rods, and for faggot cells bundles of many crossing rods, in ``where``."""
    r = canvas.radius
    rods = np.zeros(canvas.shape, dtype=np.float32)
    for _ in range(int(rng.integers(look.auer_rods[0], look.auer_rods[1] + 1))):
        cx, cy = _sample_inside(where, 1, rng)
        if cx.size:
            length = rng.uniform(0.25, 0.42) * r
            rod = _rod(
                canvas, (cx[0], cy[0]), rng.uniform(0, math.pi), length, max(1.0, 0.1 * canvas.um)
            )
            rods = np.maximum(rods, rod)
    for _ in range(int(rng.integers(look.rod_bundles[0], look.rod_bundles[1] + 1))):
        cx, cy = _sample_inside(where, 1, rng)
        if not cx.size:
            continue
        heading = rng.uniform(0, math.pi)
        for _ in range(int(rng.integers(6, 12))):
            centre = (cx[0] + rng.normal(0, 0.05 * r), cy[0] + rng.normal(0, 0.05 * r))
            angle = heading + rng.normal(0, 0.4)
            rod = _rod(
                canvas, centre, angle, rng.uniform(0.3, 0.55) * r, max(0.9, 0.08 * canvas.um)
            )
            rods = np.maximum(rods, rod)
    return rods


def render_leukocyte(
    code: str, radius: int, mpp: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one leukocyte of class ``code`` centred on a square canvas.

    Returns ``(alpha, transmission)``: how much the cell hides what lies beneath (H x W) and
    the fraction of light each channel lets through (H x W x 3), both float32. Stains add up
    as optical densities (Beer-Lambert), so overlapping granules and nucleus darken together.
    """
    look = LOOKS.get(code, GENERIC_LOOK)
    canvas = _make_canvas(radius, mpp, rng)
    x, y, r = canvas.x, canvas.y, canvas.radius
    theta = np.arctan2(y, x)
    if look.nucleus == "smudge":
        return _render_smudge(look, x, y, theta, r, rng)

    body = np.hypot(x, y) - r * (1.0 + _wobble(theta, look.outline_wobble, rng))
    cell = _coverage(body, 2.0)
    nucleus = _coverage(NUCLEUS_SHAPES[look.nucleus](x, y, r, rng), 1.2) * cell
    cytoplasm = cell * (1.0 - nucleus)

    nuclear_density = 1.0 + look.chromatin_contrast * _value_noise(
        canvas.shape, look.chromatin_px, rng
    )
    for _ in range(look.creases):
        start, end = rng.uniform(-0.45 * r, 0.45 * r, 2), rng.uniform(-0.45 * r, 0.45 * r, 2)
        crease = _capsule(x, y, start[0], start[1], end[0], end[1], 0.03 * r)
        nuclear_density = nuclear_density + 0.35 * _coverage(crease, 0.04 * r)
    nucleoli = int(rng.integers(look.nucleoli[0], look.nucleoli[1] + 1))
    deep_in_nucleus = _smoothstep(0.9, 1.0, nucleus) * (np.hypot(x, y) < 0.5 * r)
    size_um = (0.8 * look.nucleolus_um, 1.2 * look.nucleolus_um)
    nuclear_density *= 1.0 - 0.6 * _pale_spots(canvas, deep_in_nucleus, nucleoli, size_um, rng)

    edge = _smoothstep(-0.25 * r, 0.0, body)
    cytoplasm_density = (1.0 + look.edge_darkening * edge) * (
        1.0 + look.cytoplasm_texture * _value_noise(canvas.shape, 3.0, rng)
    )
    vacuoles = int(rng.integers(look.vacuoles[0], look.vacuoles[1] + 1))
    inner_cytoplasm = _smoothstep(0.9, 1.0, cytoplasm)
    cytoplasm_density *= 1.0 - 0.75 * _pale_spots(
        canvas, inner_cytoplasm, vacuoles, (0.6, 1.2), rng
    )
    cytoplasm_od = _optical_density(look.cytoplasm_rgb)
    if look.cytoplasm_alt_rgb is not None:
        mix = rng.uniform(0.0, 1.0)
        cytoplasm_od = (1 - mix) * cytoplasm_od + mix * _optical_density(look.cytoplasm_alt_rgb)

    density = (nucleus * nuclear_density)[..., None] * _optical_density(look.nucleus_rgb)
    density += (cytoplasm * cytoplasm_density)[..., None] * cytoplasm_od
    if look.granule_rgb is not None and look.granule_fill > 0:
        where = (cytoplasm + look.granules_over_nucleus * nucleus) * cell
        granules = _granule_density(canvas, look, where, rng)
        density += granules[..., None] * _optical_density(look.granule_rgb)
    safe_zone = _smoothstep(0.95, 1.0, cytoplasm) * (np.hypot(x, y) < 0.8 * r)
    rods = _auer_rods(canvas, look, safe_zone, rng) * cell
    density += rods[..., None] * _optical_density(_AUER_ROD_RGB)
    return cell.astype(np.float32), np.exp(-density).astype(np.float32)


def _render_smudge(
    look: LeukocyteLook,
    x: np.ndarray,
    y: np.ndarray,
    theta: np.ndarray,
    r: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A crushed cell: ragged, streaky pale chromatin without a cytoplasm boundary."""
    stretch = rng.uniform(1.15, 1.5)
    fray = _lattice_noise(x / (0.25 * r), y / 3.0, rng)
    ragged = 0.15 * _lattice_noise(x / 6.0, y / 6.0, rng) + 0.25 * np.maximum(fray, 0)
    blob = np.hypot(x / stretch, y * stretch) - 0.62 * r * (1.0 + _wobble(theta, 0.2, rng) + ragged)
    smear = _coverage(blob, 0.06 * r)
    streaks = _lattice_noise(x / 16.0, y / 2.5, rng)
    patches = _lattice_noise(x / 10.0, y / 10.0, rng)
    density = smear * np.clip(0.6 + 0.3 * streaks + 0.2 * patches, 0.1, None)
    alpha = smear * 0.8
    transmission = np.exp(-density[..., None] * _optical_density(look.nucleus_rgb))
    return alpha.astype(np.float32), transmission.astype(np.float32)


# --- red cells, platelets, background --------------------------------------------------------


def _red_cell_sprite(diameter: float, rng: np.random.Generator, eosin: float = 1.0) -> np.ndarray:
    """One biconcave red cell as a uint16 transmission multiplier (256 = unchanged)."""
    half = math.ceil(diameter * 0.56) + 2
    axis = np.arange(-half, half + 1, dtype=np.float32)
    x, y = np.meshgrid(axis, axis)
    squash = rng.uniform(1.0, 1.08)
    turn = rng.uniform(0, math.pi)
    u = x * math.cos(turn) + y * math.sin(turn)
    v = -x * math.sin(turn) + y * math.cos(turn)
    theta = np.arctan2(v, u)
    radius = 0.5 * diameter * (1.0 + _wobble(theta, 0.012, rng))
    rho = np.hypot(u * squash, v / squash) / radius
    pallor = rng.uniform(0.28, 0.42)
    body = 0.5 + 0.5 * _smoothstep(pallor * 0.4, pallor + 0.35, rho)
    rim = 0.18 * np.exp(-(((rho - 0.9) / 0.07) ** 2))
    edge = _coverage((rho - 1.0) * radius, 1.6)
    density = (body + rim) * edge * rng.uniform(0.85, 1.1)
    density = density * (1.0 + 0.04 * _value_noise(rho.shape, 6.0, rng))
    tone = OD_RED_CELL * np.array([1.0, rng.uniform(0.95, 1.05), rng.uniform(0.92, 1.08)])
    transmission = np.exp(-eosin * density[..., None] * tone.astype(np.float32))
    return np.round(256 * transmission).astype(np.uint16)


def _platelet_sprite(diameter: float, rng: np.random.Generator, stain: float = 1.0) -> np.ndarray:
    """A small purple granular platelet as a uint16 transmission multiplier."""
    half = math.ceil(diameter * 0.75) + 2
    axis = np.arange(-half, half + 1, dtype=np.float32)
    x, y = np.meshgrid(axis, axis)
    theta = np.arctan2(y, x)
    outline = np.hypot(x, y) - 0.5 * diameter * (1.0 + _wobble(theta, 0.25, rng))
    halo = _coverage(outline, 2.0)
    granules = 0.6 + 0.5 * _value_noise(x.shape, 2.5, rng)
    density = halo * (0.25 + granules * _smoothstep(0.0, -0.25 * diameter, outline))
    transmission = np.exp(-stain * density[..., None] * OD_PLATELET)
    return np.round(256 * transmission).astype(np.uint16)


@functools.cache
def _background_tile() -> np.ndarray:
    """A seamless square of background with fine noise, tiled over the whole scan."""
    rng = np.random.default_rng(20190)
    size = _BACKGROUND_TILE_PX
    grain = rng.normal(0.0, 2.2, (size, size, 3)).astype(np.float32)
    grain = (
        grain + np.roll(grain, 1, 0) + np.roll(grain, 1, 1) + np.roll(grain, (1, 1), (0, 1))
    ) / 2
    tile = BACKGROUND_RGB + grain + rng.normal(0, 0.6, (size, size, 1)).astype(np.float32)
    tile = np.clip(np.round(tile), 0, 255).astype(np.uint8)
    tile.flags.writeable = False
    return tile


def _fill_background(image: np.ndarray) -> None:
    """Cover ``image`` with the background tile, one full-width band at a time."""
    tile = _background_tile()
    repeats = -(-image.shape[1] // tile.shape[1])
    band = np.tile(tile, (1, repeats, 1))[:, : image.shape[1]]
    for top in range(0, image.shape[0], band.shape[0]):
        rows = image[top : top + band.shape[0]]
        rows[...] = band[: rows.shape[0]]


def _multiply_stamp(image: np.ndarray, sprite: np.ndarray, cx: int, cy: int) -> None:
    """Darken ``image`` by a uint16 transmission sprite centred on (cx, cy), clipped at edges."""
    h, w = sprite.shape[:2]
    top, left = cy - h // 2, cx - w // 2
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, image.shape[0]), min(left + w, image.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    region = image[y0:y1, x0:x1]
    product = region * sprite[y0 - top : y1 - top, x0 - left : x1 - left]
    product >>= 8
    region[...] = product


def _row_major(placement: tuple[tuple[int, int, int], int]) -> tuple[int, int]:
    """Sort key that stamps top to bottom, which keeps memory access local."""
    (x, y, _), _ = placement
    return y, x


def _place_red_cells(
    width: int,
    height: int,
    radii: np.ndarray,
    target: int,
    blocked: Sequence[tuple[int, int, int]],
    rng: np.random.Generator,
) -> list[tuple[int, int, int]]:
    """Random sequential placement of red cells that touch but hardly overlap.

    ``radii`` holds one radius per sprite; returns (x, y, sprite index). Cells whose centre
    falls well inside a leukocyte in ``blocked`` are left out, since the leukocyte covers them.
    """
    cell = 2 * RED_CELL_MIN_GAP * float(radii.max())
    cols, rows = int(width // cell) + 1, int(height // cell) + 1
    grid: list[list[tuple[float, float, float]]] = [[] for _ in range(cols * rows)]
    placed: list[tuple[int, int, int]] = []
    attempts = 0
    while len(placed) < target and attempts < 8 * target:
        batch = 4096
        xs = rng.uniform(0, width, batch).tolist()
        ys = rng.uniform(0, height, batch).tolist()
        kinds = rng.integers(0, radii.size, batch).tolist()
        for x, y, kind in zip(xs, ys, kinds, strict=True):
            attempts += 1
            r = float(radii[kind])
            col, row = int(x // cell), int(y // cell)
            clash = False
            for other_row in range(max(row - 1, 0), min(row + 2, rows)):
                for other_col in range(max(col - 1, 0), min(col + 2, cols)):
                    for ox, oy, orad in grid[other_row * cols + other_col]:
                        limit = RED_CELL_MIN_GAP * (r + orad)
                        if (x - ox) ** 2 + (y - oy) ** 2 < limit * limit:
                            clash = True
                            break
                    if clash:
                        break
                if clash:
                    break
            if clash:
                continue
            grid[row * cols + col].append((x, y, r))
            placed.append((int(x), int(y), kind))
            if len(placed) >= target:
                break
    if not placed or not blocked:
        return placed
    xs, ys, kinds = (np.array(column) for column in zip(*placed, strict=True))
    keep = np.ones(xs.size, dtype=bool)
    for bx, by, br in blocked:
        keep &= (xs - bx) ** 2 + (ys - by) ** 2 >= (br + 0.3 * radii[kinds]) ** 2
    return [cell for cell, kept in zip(placed, keep.tolist(), strict=True) if kept]


# --- buffers ---------------------------------------------------------------------------------


class Scratch:
    """Large arrays kept from one scan to the next of a series.

    Touching freshly mapped memory is slow on virtual machines (seconds per gigabyte), so a
    series reuses its level-0 canvas and pyramid buffers instead of allocating new ones.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def image(self, name: str, height: int, width: int) -> np.ndarray:
        """An uninitialised RGB uint8 array of this size, reused if the last one matched."""
        found = self._arrays.get(name)
        if found is None or found.shape != (height, width, 3):
            self._arrays.pop(name, None)
            found = self._arrays[name] = np.empty((height, width, 3), dtype=np.uint8)
        return found


# --- layout ----------------------------------------------------------------------------------


def plant_leukocytes(
    width: int,
    height: int,
    cells: int,
    mpp: float,
    codes: Sequence[str],
    rng: np.random.Generator,
    *,
    touching_share: float = 0.0,
    feathered_edge: float = 0.0,
) -> list[dict]:
    """Choose class, size and a non-overlapping position for each leukocyte.

    Classes cycle through ``codes`` in a seeded order, so each appears once ``cells`` reaches
    ``len(codes)``. Centres keep ``EDGE_MARGIN_PX`` from every edge. About ``touching_share``
    of the cells touch one planted before (outlines at most 1 µm apart), the rest keep
    ``LEUKOCYTE_GAP_PX`` from all; ``feathered_edge`` (0-1) is how much rarer cells are on one
    side of the scan than on the opposite one, as towards and away from a smear's feathered edge.
    """
    if cells and not codes:
        raise ValueError("codes must not be empty when cells > 0")
    if width < 2 * EDGE_MARGIN_PX + 1 or height < 2 * EDGE_MARGIN_PX + 1:
        raise ValueError(f"scan must be larger than {2 * EDGE_MARGIN_PX} px each side")
    order = [codes[i] for i in rng.permutation(len(codes))] if codes else []
    heading = rng.uniform(0, 2 * math.pi)
    towards = (math.cos(heading), math.sin(heading))
    corners = [x * towards[0] + y * towards[1] for x in (0, width) for y in (0, height)]
    nearest, reach = min(corners), max(corners) - min(corners)
    planted: list[dict] = []

    def fits(x: int, y: int, radius: int, partner: dict | None = None) -> bool:
        if not (
            EDGE_MARGIN_PX <= x <= width - EDGE_MARGIN_PX
            and EDGE_MARGIN_PX <= y <= height - EDGE_MARGIN_PX
        ):
            return False
        return all(
            (x - c["x"]) ** 2 + (y - c["y"]) ** 2
            >= (radius + c["radius"] + (0 if c is partner else LEUKOCYTE_GAP_PX)) ** 2
            for c in planted
        )

    def beside_another(radius: int) -> tuple[int, int] | None:
        for _ in range(50):
            partner = planted[int(rng.integers(len(planted)))]
            angle = rng.uniform(0, 2 * math.pi)
            distance = radius + partner["radius"] + rng.uniform(0.0, 1.0) / mpp
            x = round(partner["x"] + distance * math.cos(angle))
            y = round(partner["y"] + distance * math.sin(angle))
            if math.hypot(x - partner["x"], y - partner["y"]) < radius + partner["radius"]:
                continue
            if fits(x, y, radius, partner):
                return x, y
        return None

    for index in range(cells):
        code = order[index % len(order)]
        low, high = LOOKS.get(code, GENERIC_LOOK).diameter_um
        radius = round(0.5 * rng.uniform(low, high) / mpp)
        spot = beside_another(radius) if planted and rng.uniform() < touching_share else None
        for _ in range(5000 if spot is None else 0):
            x = int(rng.integers(EDGE_MARGIN_PX, width - EDGE_MARGIN_PX + 1))
            y = int(rng.integers(EDGE_MARGIN_PX, height - EDGE_MARGIN_PX + 1))
            along = (x * towards[0] + y * towards[1] - nearest) / reach
            if rng.uniform() < feathered_edge * (1.0 - along):
                continue
            if fits(x, y, radius):
                spot = x, y
                break
        if spot is None:
            raise ValueError(f"cannot fit {cells} leukocytes into a {width} x {height} scan")
        planted.append({"x": spot[0], "y": spot[1], "code": code, "radius": radius})
    return planted


def plant_distractors(
    width: int,
    height: int,
    leukocytes: Sequence[dict],
    mpp: float,
    rng: np.random.Generator,
) -> list[dict]:
    """Choose kind, extent and centre of each distractor, clear of leukocytes and each other.

    Counts follow ``DISTRACTORS_PER_MM2`` for the scan's area (at least
    ``MIN_DISTRACTORS_PER_KIND`` of each kind); a distractor that finds no free place in a
    crowded scan is left out, so the list holds exactly what is painted.
    """
    area_mm2 = width * height * (mpp / 1000.0) ** 2
    clearance = DISTRACTOR_CLEARANCE_UM / mpp
    taken = [(c["x"], c["y"], c["radius"]) for c in leukocytes]
    planted: list[dict] = []
    for kind, (low, high) in DISTRACTORS_PER_MM2.items():
        count = max(MIN_DISTRACTORS_PER_KIND, round(rng.uniform(low, high) * area_mm2))
        for _ in range(count):
            radius = round(rng.uniform(*DISTRACTOR_RADIUS_UM[kind]) / mpp)
            for _ in range(200):
                x = int(rng.integers(EDGE_MARGIN_PX, width - EDGE_MARGIN_PX + 1))
                y = int(rng.integers(EDGE_MARGIN_PX, height - EDGE_MARGIN_PX + 1))
                if all(
                    (x - ox) ** 2 + (y - oy) ** 2 >= (radius + other + clearance) ** 2
                    for ox, oy, other in taken
                ):
                    planted.append({"kind": kind, "x": x, "y": y, "radius": radius})
                    taken.append((x, y, radius))
                    break
    return planted


def render_smear(
    width: int,
    height: int,
    leukocytes: Sequence[dict],
    mpp: float,
    rng: np.random.Generator,
    scratch: Scratch | None = None,
    *,
    distractors: Sequence[dict] = (),
    stain: float = 1.0,
    eosin: float = 1.0,
) -> np.ndarray:
    """Paint the level-0 RGB image: background, red cells, platelets, distractors, then the
    leukocytes. ``stain`` and ``eosin`` scale the optical density of stained cells and of red
    cells."""
    red_rng, platelet_rng, leukocyte_rng, distractor_rng = rng.spawn(4)
    image = (scratch or Scratch()).image("level-0", height, width)
    _fill_background(image)

    diameters = red_rng.uniform(*RED_CELL_DIAMETER_UM, _RED_CELL_SPRITES) / mpp
    sprites = [_red_cell_sprite(d, red_rng, eosin) for d in diameters]
    mean_area = float(np.mean(math.pi * (diameters / 2) ** 2))
    target = int(RED_CELL_AREA_FRACTION * width * height / mean_area)
    blocked = [(c["x"], c["y"], c["radius"]) for c in leukocytes]
    red_cells = _place_red_cells(width, height, diameters / 2, target, blocked, red_rng)
    variants = [
        np.ascontiguousarray(sprite[::row_step, ::col_step])
        for sprite in sprites
        for row_step in (1, -1)
        for col_step in (1, -1)
    ]
    choices = red_rng.integers(0, 4, len(red_cells)).tolist()
    for (x, y, kind), flip in sorted(zip(red_cells, choices, strict=True), key=_row_major):
        _multiply_stamp(image, variants[4 * kind + flip], x, y)

    platelet_sprites = [
        _platelet_sprite(d / mpp, platelet_rng, stain)
        for d in platelet_rng.uniform(1.8, 3.2, _PLATELET_SPRITES)
    ]
    platelets = int(len(red_cells) * PLATELETS_PER_RED_CELL)
    xs = platelet_rng.integers(0, width, 2 * platelets)
    ys = platelet_rng.integers(0, height, 2 * platelets)
    in_gap = image[ys, xs, 1] > BACKGROUND_RGB[1] - 12  # mostly between red cells, not on them
    xs, ys = xs[in_gap][:platelets].tolist(), ys[in_gap][:platelets].tolist()
    kinds = platelet_rng.integers(0, _PLATELET_SPRITES, len(xs)).tolist()
    for x, y, kind in zip(xs, ys, kinds, strict=True):
        _multiply_stamp(image, platelet_sprites[kind], x, y)

    for spot, spot_rng in zip(distractors, distractor_rng.spawn(len(distractors)), strict=True):
        if spot["kind"] == "platelet_clump":
            _paint_platelet_clump(image, spot, platelet_sprites, spot_rng)
        elif spot["kind"] == "precipitate":
            _paint_precipitate(image, spot, mpp, stain, spot_rng)
        else:
            _paint_overlapping_red_cells(image, spot, variants, spot_rng)

    for cell, cell_rng in zip(leukocytes, leukocyte_rng.spawn(len(leukocytes)), strict=True):
        alpha, transmission = render_leukocyte(cell["code"], cell["radius"], mpp, cell_rng)
        _overlay(image, alpha, transmission**stain, cell["x"], cell["y"])
    return image


def _paint_platelet_clump(
    image: np.ndarray, spot: dict, sprites: Sequence[np.ndarray], rng: np.random.Generator
) -> None:
    """Platelets heaped within ``spot``'s radius, touching and partly overlapping."""
    count = int(rng.integers(5, 13))
    reach = spot["radius"] - max(sprite.shape[0] for sprite in sprites) // 4
    for _ in range(count):
        angle, distance = rng.uniform(0, 2 * math.pi), reach * math.sqrt(rng.uniform())
        x = round(spot["x"] + distance * math.cos(angle))
        y = round(spot["y"] + distance * math.sin(angle))
        _multiply_stamp(image, sprites[int(rng.integers(len(sprites)))], x, y)


def _paint_precipitate(
    image: np.ndarray, spot: dict, mpp: float, stain: float, rng: np.random.Generator
) -> None:
    """Stain precipitate: a few dark, sharp-edged specks and needle-like crystals."""
    radius = spot["radius"]
    half = radius + 4
    axis = np.arange(-half, half + 1, dtype=np.float32)
    x, y = np.meshgrid(axis, axis)
    shape = np.full_like(x, np.inf)
    for _ in range(int(rng.integers(4, 13))):
        angle, distance = rng.uniform(0, 2 * math.pi), 0.8 * radius * math.sqrt(rng.uniform())
        cx, cy = distance * math.cos(angle), distance * math.sin(angle)
        if rng.uniform() < 0.4:
            length = rng.uniform(0.8, 3.5) / mpp
            turn = rng.uniform(0, math.pi)
            dx, dy = 0.5 * length * math.cos(turn), 0.5 * length * math.sin(turn)
            width = rng.uniform(0.15, 0.35) / mpp
            piece = _capsule(x, y, cx - dx, cy - dy, cx + dx, cy + dy, width)
        else:
            a, b = rng.uniform(0.2, 0.7, 2) / mpp
            theta = np.arctan2(y - cy, x - cx)
            piece = _ellipse(x, y, cx, cy, a, b, rng.uniform(0, math.pi))
            piece = piece + min(a, b) * _wobble(theta, 0.3, rng)
        shape = np.minimum(shape, piece)
    density = _coverage(shape, 1.2) * rng.uniform(1.1, 1.8) * stain
    transmission = np.exp(-density[..., None] * OD_PRECIPITATE)
    _multiply_stamp(image, np.round(256 * transmission).astype(np.uint16), spot["x"], spot["y"])


def _paint_overlapping_red_cells(
    image: np.ndarray, spot: dict, variants: Sequence[np.ndarray], rng: np.random.Generator
) -> None:
    """Two or three red cells stacked over each other, darker where they overlap."""
    count = int(rng.integers(2, 4))
    for index in range(count):
        sprite = variants[int(rng.integers(len(variants)))]
        angle = rng.uniform(0, 2 * math.pi)
        distance = 0 if index == 0 else rng.uniform(0.25, 0.5) * sprite.shape[0]
        x = round(spot["x"] + distance * math.cos(angle))
        y = round(spot["y"] + distance * math.sin(angle))
        _multiply_stamp(image, sprite, x, y)


def _overlay(
    image: np.ndarray, alpha: np.ndarray, transmission: np.ndarray, cx: int, cy: int
) -> None:
    """Lay a rendered cell over ``image``: hide what it covers, then apply its stain."""
    half = alpha.shape[0] // 2
    y0, x0 = max(cy - half, 0), max(cx - half, 0)
    y1, x1 = min(cy + half + 1, image.shape[0]), min(cx + half + 1, image.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    inner = (slice(y0 - cy + half, y1 - cy + half), slice(x0 - cx + half, x1 - cx + half))
    cover = alpha[inner][..., None]
    region = image[y0:y1, x0:x1]
    wiped = region * (1.0 - cover) + BACKGROUND_RGB * cover
    region[...] = np.clip(np.round(wiped * transmission[inner]), 0, 255).astype(np.uint8)


# --- pyramid and TIFF ------------------------------------------------------------------------


def halve(image: np.ndarray, result: np.ndarray | None = None) -> np.ndarray:
    """Downsample an RGB uint8 image by 2 (2 x 2 box average) into ``result``.

    Pillow's ``reduce`` works on short strips, so its temporary copies stay small, on a few
    threads (it releases the GIL); strips are independent, so the result is deterministic.
    """
    height, width = image.shape[:2]
    if result is None:
        result = np.empty(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.uint8)

    def halve_strip(top: int) -> None:
        strip = Image.fromarray(image[top : top + _STRIP_ROWS]).reduce(2)
        result[top // 2 : top // 2 + strip.height] = strip

    with ThreadPoolExecutor(ENCODER_THREADS) as pool:
        list(pool.map(halve_strip, range(0, height, _STRIP_ROWS)))
    return result


@functools.cache
def resolution_tags(mpp: float) -> tuple[str, tuple[int, int]]:
    """TIFF resolution unit and pixels-per-unit rational from which OpenSlide reads back ``mpp``.

    OpenSlide's generic-tiff driver reports ``mpp = 10000 / (num / den)`` for a centimetre
    unit (25400 for inch), computed in doubles. A centimetre rational is preferred; when none
    with a small denominator yields exactly ``mpp`` (0.0725 is such a case) an inch one is
    tried, and failing both the nearest centimetre rational is used.
    """
    for unit, microns_per_unit in (("CENTIMETER", 10000.0), ("INCH", 25400.0)):
        pixels_per_unit = microns_per_unit / mpp
        largest = min(_MAX_RESOLUTION_DENOMINATOR, int(_UINT32_MAX / (pixels_per_unit + 1)))
        for denominator in range(1, largest + 1):
            guess = round(pixels_per_unit * denominator)
            for numerator in (guess, guess - 1, guess + 1):
                if 0 < numerator <= _UINT32_MAX and (
                    microns_per_unit / (numerator / denominator) == mpp
                ):
                    return unit, (numerator, denominator)
    pixels_per_cm = 10000.0 / mpp
    nearest = Fraction(pixels_per_cm).limit_denominator(
        max(1, min(_UINT32_MAX, int(_UINT32_MAX / (pixels_per_cm + 1))))
    )
    return "CENTIMETER", (nearest.numerator, nearest.denominator)


def pyramid_levels(image: np.ndarray, scratch: Scratch | None = None) -> list[np.ndarray]:
    """Level 0 and its successive halvings until the smaller side is at most 1000 px."""
    scratch = scratch or Scratch()
    levels = [image]
    while min(levels[-1].shape[:2]) > SMALLEST_LEVEL_SIDE_PX:
        height, width = levels[-1].shape[:2]
        target = scratch.image(f"level-{len(levels)}", (height + 1) // 2, (width + 1) // 2)
        levels.append(halve(levels[-1], target))
    return levels


def write_pyramid_tiff(
    path: Path, levels: Sequence[np.ndarray], mpp: float, description: str
) -> None:
    """Write a JPEG-tiled pyramid as successive IFDs, reduced levels flagged as such.

    OpenSlide's generic-tiff driver walks the main IFD chain (not SubIFDs) and accepts a
    directory after the first only if its NewSubfileType has the reduced-image bit set.
    """
    unit, (numerator, denominator) = resolution_tags(mpp)
    uncompressed = sum(level.nbytes for level in levels)
    with tifffile.TiffWriter(path, bigtiff=uncompressed > 3_500_000_000) as writer:
        for index, level in enumerate(levels):
            scale = 2**index
            writer.write(
                level,
                photometric="rgb",
                tile=(TILE_PX, TILE_PX),
                compression="jpeg",
                compressionargs={"level": JPEG_QUALITY},
                resolution=((numerator, denominator * scale), (numerator, denominator * scale)),
                resolutionunit=unit,
                subfiletype=0 if index == 0 else 1,
                description=description if index == 0 else None,
                software=GENERATOR,
                metadata=None,
                maxworkers=ENCODER_THREADS,
            )


# --- files -----------------------------------------------------------------------------------


def _replace_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a temporary file beside ``final``, then rename it into place.

    The rename is atomic within one folder, so ``final`` is either the old file or the
    complete new one; the temporary file is removed if writing fails or is interrupted.
    """
    temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
    try:
        write(temporary)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def render_scan(
    *,
    width: int,
    height: int,
    cells: int,
    seed: int,
    mpp: float = 0.0725,
    codes: Sequence[str] = AML_LEAF_CODES,
    scratch: Scratch | None = None,
) -> tuple[dict, np.ndarray]:
    """What a scan holds and its level-0 pixels, without writing anything.

    The first item is the ground truth as the manifest records it: ``cells`` (the planted
    leukocytes), ``distractors`` (planted things that are not leukocytes) and ``style`` (this
    scan's stain intensity, touching share and feathered-edge fall).
    """
    if width <= 0 or height <= 0 or cells < 0 or mpp <= 0:
        raise ValueError("width, height and mpp must be positive and cells not negative")
    layout_rng, paint_rng, style_rng = np.random.default_rng(seed).spawn(3)
    style = {
        name: round(float(style_rng.uniform(*limits)), 3)
        for name, limits in (
            ("stain", STAIN_INTENSITY),
            ("eosin", EOSIN_INTENSITY),
            ("touching_share", TOUCHING_SHARE),
            ("feathered_edge", FEATHERED_EDGE),
        )
    }
    leukocytes = plant_leukocytes(
        width,
        height,
        cells,
        mpp,
        tuple(codes),
        layout_rng,
        touching_share=style["touching_share"],
        feathered_edge=style["feathered_edge"],
    )
    distractors = plant_distractors(width, height, leukocytes, mpp, layout_rng)
    image = render_smear(
        width,
        height,
        leukocytes,
        mpp,
        paint_rng,
        scratch,
        distractors=distractors,
        stain=style["stain"],
        eosin=style["eosin"],
    )
    return {"cells": leukocytes, "distractors": distractors, "style": style}, image


def make_synthetic_scan(
    path: str | os.PathLike,
    *,
    width: int,
    height: int,
    cells: int,
    seed: int,
    mpp: float = 0.0725,
    codes: Sequence[str] = AML_LEAF_CODES,
    scratch: Scratch | None = None,
) -> dict:
    """Write one synthetic smear scan to ``path`` and its manifest beside it (``.json``).

    The manifest lists every planted leukocyte's level-0 centre, class code and radius, every
    distractor's kind, centre and radius, and the scan's style (``render_scan``). The
    TIFF and JSON are each written atomically, TIFF first, so a manifest only ever describes a
    complete scan. Same arguments, same bytes. ``scratch`` lets a series reuse its buffers.
    """
    tiff_path = Path(path)
    json_path = tiff_path.with_suffix(".json")
    scratch = scratch or Scratch()
    truth, image = render_scan(
        width=width, height=height, cells=cells, seed=seed, mpp=mpp, codes=codes, scratch=scratch
    )
    levels = pyramid_levels(image, scratch)
    description = (
        f"Cytomark synthetic peripheral blood smear ({GENERATOR}); seed={seed}; "
        f"leukocytes={cells}; mpp={mpp!r}"
    )
    json_path.unlink(missing_ok=True)
    _replace_atomically(
        tiff_path, lambda temporary: write_pyramid_tiff(temporary, levels, mpp, description)
    )
    manifest = {
        "file": tiff_path.name,
        "width": width,
        "height": height,
        "mpp": mpp,
        "seed": seed,
        "cells": truth["cells"],
        "distractors": truth["distractors"],
        "style": truth["style"],
        "generator": GENERATOR,
        "bytes": tiff_path.stat().st_size,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    _replace_atomically(json_path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return manifest


def scan_seed(seed: int, index: int) -> int:
    """Seed of scan ``index`` in a series, independent of its neighbours' seeds."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _reusable(tiff_path: Path, json_path: Path, expected: dict) -> dict | None:
    """The stored manifest if it records ``expected`` and its TIFF is complete, else None."""
    try:
        manifest = json.loads(json_path.read_text(encoding="utf-8"))
        size = tiff_path.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("bytes") != size:
        return None
    recorded = {key: manifest.get(key) for key in expected}
    recorded["cells"] = len(manifest.get("cells") or ())
    return manifest if recorded == expected else None


def make_synthetic_scans(
    out_dir: str | os.PathLike,
    *,
    count: int,
    cells: int,
    seed: int,
    width: int = 20000,
    height: int = 20000,
    mpp: float = 0.0725,
    on_scan: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Make ``synthetic_000.tiff`` ... in ``out_dir``, reusing scans already made alike.

    Returns each scan's manifest plus ``path`` (the TIFF) and ``reused``; ``on_scan`` is
    called with the same dict as each scan is done.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Scratch()
    results = []
    for index in range(count):
        tiff_path = folder / f"synthetic_{index:03d}.tiff"
        this_seed = scan_seed(seed, index)
        expected = {
            "width": width,
            "height": height,
            "cells": cells,
            "seed": this_seed,
            "mpp": mpp,
            "generator": GENERATOR,
        }
        manifest = _reusable(tiff_path, tiff_path.with_suffix(".json"), expected)
        reused = manifest is not None
        if manifest is None:
            manifest = make_synthetic_scan(
                tiff_path,
                width=width,
                height=height,
                cells=cells,
                seed=this_seed,
                mpp=mpp,
                scratch=scratch,
            )
        result = {**manifest, "path": str(tiff_path), "reused": reused}
        if on_scan is not None:
            on_scan(result)
        results.append(result)
    return results
