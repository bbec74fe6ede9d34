"""Leukocyte candidates on a whole-slide scan, found by their stained nuclei.

A classical detector, so that a scan can be screened before any model is trained: the scan is
read tile by tile at a working resolution near 0.6 µm/px, the haematoxylin channel of a colour
deconvolution (``skimage.color.rgb2hed``) is thresholded, lobes of one nucleus are joined by a
closing, touching nuclei are split (distance transform, h-maxima, watershed) and each object is
kept or refused by its size in µm² and, for small nuclei, by the cytoplasm around it: a
leukocyte's small nucleus sits in a cell body, a platelet clump or stain precipitate sits among
red cells and background. Pale, large, diffuse stain (a smudge cell, KSC in the AML taxonomy)
is found by a second, coarser pass. Tiles overlap by more than a cell, and an object belongs
to the tile whose core holds its centre, so a cell on a tile edge is proposed once. Memory is
bounded by the tile, not the scan; the result depends on the pixels only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation
from skimage.color import rgb2hed

from core.errors import DomainError

DETECTOR_VERSION = "nuclei-1"


class DetectionStopped(Exception):
    """Raised between tiles when ``should_stop`` says so; nothing is returned."""


@dataclass(frozen=True)
class Proposal:
    """A proposed leukocyte: its centre in level-0 pixels and a confidence in 0-1."""

    x: int
    y: int
    confidence: float


@dataclass(frozen=True)
class DetectorSettings:
    """The detector's parameters; the defaults were tuned on synthetic seeds 7-13."""

    working_mpp: float = 0.58  # target µm per working pixel (a level at 8x of a 100x scan)
    tile_px: int = 1024  # core of a tile, in working pixels
    overlap_um: float = 24.0  # margin read around each tile core: more than a cell's radius
    nucleus_blur_um: float = 0.6
    nucleus_threshold: float = 0.03  # haematoxylin optical density
    lobe_join_um: float = 1.2  # closing radius: lobes of a segmented nucleus become one
    min_nucleus_um2: float = 12.0
    lone_nucleus_um2: float = 36.0  # a smaller nucleus must lie in a cell body
    max_nucleus_um2: float = 700.0
    context_ring_um: tuple[float, float] = (3.5, 5.0)  # annulus around a small nucleus
    max_outside_share: float = 0.2  # of that annulus that may be red cells or background
    split_above_um2: float = 60.0  # objects this large may be touching nuclei
    split_depth_um: float = 1.0  # a distance peak this much above its saddle is a nucleus
    suppress_within_um: float = 4.0  # proposals closer than this are one cell
    smudge_blur_um: float = 1.5
    smudge_threshold: float = 0.015
    smudge_min_um2: float = 40.0
    smudge_max_density: float = 0.055  # 95th percentile of haematoxylin: pale only


DEFAULT_SETTINGS = DetectorSettings()


@dataclass(frozen=True)
class WorkingGrid:
    """Where the detector reads: a pyramid level, an extra box reduction and the bounds."""

    level: int
    reduce: int
    scale: float  # level-0 pixels per working pixel
    mpp: float  # µm per working pixel
    bounds: tuple[int, int, int, int]  # x, y, width, height of the scanned area, level 0
    size: tuple[int, int]  # working width and height of the bounds


def detect_leukocytes(
    path_or_slide: str | os.PathLike | openslide.AbstractSlide,
    *,
    settings: DetectorSettings = DEFAULT_SETTINGS,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Proposal]:
    """Propose every leukocyte of a scan, in reading order (top to bottom, left to right).

    ``progress(done, total)`` is called after each tile; ``should_stop()`` is asked before each
    and stops the run with ``DetectionStopped``. A file OpenSlide cannot read, or a scan without
    microns per pixel, raises ``DomainError`` naming the problem.
    """
    if isinstance(path_or_slide, openslide.AbstractSlide):
        return _detect(path_or_slide, "the scan", settings, progress, should_stop)
    name = Path(path_or_slide).name
    try:
        slide = openslide.open_slide(str(path_or_slide))
    except (openslide.OpenSlideError, OSError) as exc:
        raise DomainError(f"{name}: the scan cannot be opened for detection ({exc})") from None
    with slide:
        return _detect(slide, name, settings, progress, should_stop)


def working_grid(
    slide: openslide.AbstractSlide, name: str, settings: DetectorSettings = DEFAULT_SETTINGS
) -> WorkingGrid:
    """The pyramid level and reduction nearest ``settings.working_mpp`` without going coarser."""
    try:
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
    except (KeyError, ValueError):
        mpp = 0.0
    if not mpp > 0:
        raise DomainError(f"{name}: the scan does not say its microns per pixel")
    factor = max(1.0, settings.working_mpp / mpp)
    level = max(
        (i for i, down in enumerate(slide.level_downsamples) if down <= factor * 1.05), default=0
    )
    down = slide.level_downsamples[level]
    reduce = max(1, round(factor / down))
    scale = down * reduce
    props = slide.properties
    width, height = slide.dimensions
    bounds = (
        int(props.get(openslide.PROPERTY_NAME_BOUNDS_X, 0)),
        int(props.get(openslide.PROPERTY_NAME_BOUNDS_Y, 0)),
        int(props.get(openslide.PROPERTY_NAME_BOUNDS_WIDTH, width)),
        int(props.get(openslide.PROPERTY_NAME_BOUNDS_HEIGHT, height)),
    )
    size = (int(bounds[2] // scale), int(bounds[3] // scale))
    return WorkingGrid(level, reduce, scale, mpp * scale, bounds, size)


def read_working_tiles(
    slide: openslide.AbstractSlide, grid: WorkingGrid, name: str, settings: DetectorSettings
) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int], np.ndarray]]:
    """Each tile as (core box, origin of the read window, RGB float32 pixels), working pixels.

    The window is the core plus ``overlap_um`` on every side, clipped to the scanned area;
    transparent pixels (outside a slide's scanned regions) read as white.
    """
    margin = math.ceil(settings.overlap_um / grid.mpp)
    width, height = grid.size
    step = settings.tile_px
    for top in range(0, height, step):
        for left in range(0, width, step):
            core = (left, top, min(left + step, width), min(top + step, height))
            x0, y0 = max(left - margin, 0), max(top - margin, 0)
            x1, y1 = min(core[2] + margin, width), min(core[3] + margin, height)
            yield core, (x0, y0), _read_window(slide, grid, name, x0, y0, x1 - x0, y1 - y0)


def _read_window(
    slide: openslide.AbstractSlide, grid: WorkingGrid, name: str, x: int, y: int, w: int, h: int
) -> np.ndarray:
    location = (round(grid.bounds[0] + x * grid.scale), round(grid.bounds[1] + y * grid.scale))
    try:
        region = slide.read_region(location, grid.level, (w * grid.reduce, h * grid.reduce))
    except openslide.OpenSlideError as exc:
        raise DomainError(
            f"{name}: pixels near ({location[0]}, {location[1]}) cannot be read ({exc})"
        ) from None
    white = Image.new("RGBA", region.size, (255, 255, 255, 255))
    rgb = np.asarray(Image.alpha_composite(white, region).convert("RGB"), dtype=np.float32)
    if grid.reduce > 1:
        rgb = rgb.reshape(h, grid.reduce, w, grid.reduce, 3).mean(axis=(1, 3))
    return rgb


def _detect(
    slide: openslide.AbstractSlide,
    name: str,
    settings: DetectorSettings,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> list[Proposal]:
    grid = working_grid(slide, name, settings)
    tiles = math.ceil(grid.size[0] / settings.tile_px) * math.ceil(grid.size[1] / settings.tile_px)
    found: list[tuple[float, float, float]] = []
    for done, (core, origin, rgb) in enumerate(read_working_tiles(slide, grid, name, settings)):
        if should_stop is not None and should_stop():
            raise DetectionStopped(f"{name}: detection stopped after {done} of {tiles} tiles")
        for x, y, confidence in detect_in_tile(rgb, grid.mpp, settings):
            gx, gy = x + origin[0], y + origin[1]
            if core[0] <= gx < core[2] and core[1] <= gy < core[3]:
                found.append((gx, gy, confidence))
        if progress is not None:
            progress(done + 1, tiles)
    kept = _suppress_neighbours(found, settings.suppress_within_um / grid.mpp)
    proposals = [
        Proposal(
            x=round(grid.bounds[0] + (gx + 0.5) * grid.scale),
            y=round(grid.bounds[1] + (gy + 0.5) * grid.scale),
            confidence=round(confidence, 3),
        )
        for gx, gy, confidence in kept
    ]
    return sorted(proposals, key=lambda p: (p.y, p.x))


def _suppress_neighbours(
    found: list[tuple[float, float, float]], radius: float
) -> list[tuple[float, float, float]]:
    """Keep the most confident of proposals closer than ``radius`` to each other."""
    kept: list[tuple[float, float, float]] = []
    for candidate in sorted(found, key=lambda f: (-f[2], f[1], f[0])):
        if all(math.hypot(candidate[0] - k[0], candidate[1] - k[1]) >= radius for k in kept):
            kept.append(candidate)
    return kept


def detect_in_tile(
    rgb: np.ndarray, mpp: float, settings: DetectorSettings = DEFAULT_SETTINGS
) -> list[tuple[float, float, float]]:
    """Leukocytes in one RGB window (0-255 floats) at ``mpp`` µm/px: (x, y, confidence)."""
    haematoxylin = rgb2hed(np.clip(rgb / 255.0, 1e-6, 1.0))[..., 0].astype(np.float32)
    outside = _red_cell_or_background(rgb)
    px_area = mpp * mpp
    smooth = filters.gaussian(haematoxylin, settings.nucleus_blur_um / mpp)
    mask = morphology.closing(
        smooth > settings.nucleus_threshold, morphology.disk(round(settings.lobe_join_um / mpp))
    )
    mask = ndi.binary_fill_holes(mask)
    labels = _split_touching(measure.label(mask), mpp, settings)

    found = []
    for region in measure.regionprops(labels, intensity_image=haematoxylin):
        area = region.area * px_area
        if not settings.min_nucleus_um2 <= area <= settings.max_nucleus_um2:
            continue
        y, x = region.centroid
        outside_share = _ring_share(outside, x, y, mpp, settings.context_ring_um)
        if area < settings.lone_nucleus_um2 and outside_share > settings.max_outside_share:
            continue
        stain = min(1.0, region.intensity_mean / (2 * settings.nucleus_threshold))
        size = min(1.0, area / settings.lone_nucleus_um2)
        context = 1.0 - outside_share
        found.append((x, y, 0.4 + 0.6 * stain * size * context))

    pale = filters.gaussian(haematoxylin, settings.smudge_blur_um / mpp)
    for region in measure.regionprops(
        measure.label(pale > settings.smudge_threshold), intensity_image=haematoxylin
    ):
        if region.area * px_area < settings.smudge_min_um2:
            continue
        values = region.image_intensity[region.image]
        if np.percentile(values, 95) > settings.smudge_max_density:
            continue
        y, x = region.centroid
        reach = (region.equivalent_diameter_area / 2) ** 2
        if all((x - fx) ** 2 + (y - fy) ** 2 > reach for fx, fy, _ in found):
            found.append((x, y, 0.35))
    return found


def _split_touching(labels: np.ndarray, mpp: float, settings: DetectorSettings) -> np.ndarray:
    """Split objects large enough to be two nuclei where their distance map has two peaks."""
    result = labels.copy()
    next_label = int(labels.max()) + 1
    depth = settings.split_depth_um / mpp
    for region in measure.regionprops(labels):
        if region.area * mpp * mpp <= settings.split_above_um2:
            continue
        top, left, bottom, right = region.bbox
        inside = np.pad(region.image, 1)
        distance = ndi.distance_transform_edt(inside)
        peaks = measure.label(morphology.h_maxima(distance, depth))
        if peaks.max() < 2:
            continue
        parts = segmentation.watershed(-distance, peaks, mask=inside)[1:-1, 1:-1]
        window = result[top:bottom, left:right]
        for part in range(2, int(parts.max()) + 1):
            window[parts == part] = next_label
            next_label += 1
    return result


def _red_cell_or_background(rgb: np.ndarray) -> np.ndarray:
    """Pixels of red cells (pink: red well above green, blue near green) or bare background."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    pink = (red - green > 35) & (blue - green > -6) & (blue - green < 17)
    bare = (green > 218) & (red - green < 15)
    return pink | bare


def _ring_share(
    mask: np.ndarray, x: float, y: float, mpp: float, ring_um: tuple[float, float]
) -> float:
    """Share of ``mask`` in the annulus ``ring_um`` around (x, y); 0 if it lies off the tile."""
    outer = math.ceil(ring_um[1] / mpp)
    cx, cy = round(x), round(y)
    y0, y1 = max(cy - outer, 0), min(cy + outer + 1, mask.shape[0])
    x0, x1 = max(cx - outer, 0), min(cx + outer + 1, mask.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    distance = np.hypot(xx - cx, yy - cy) * mpp
    ring = (distance >= ring_um[0]) & (distance <= ring_um[1])
    return float(mask[y0:y1, x0:x1][ring].mean()) if ring.any() else 0.0
