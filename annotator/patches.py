"""Cell patches: the square of the scan around a clicked cell, stored as PNG in media storage.

A patch is cut at level 0, centred on the cell, with the study's side length (pixels, or
micrometres through the scan's resolution). Where the square runs past the scan's edge the
missing part is filled with `settings.PATCH_BACKGROUND`, and the padding is reported so that a
client can tell real pixels from filler. The storage name holds the scan's checksum, the
position and the size, so a moved cell gets a new patch and a stored patch never changes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image, ImageColor, ImageDraw

from core import failures, leases
from core.errors import DomainError
from core.storage import store_bytes

from .models import Cell, Label, PatchBatch, Scan, Study
from .tiles import slide_handles


@dataclass(frozen=True)
class PatchGeometry:
    """Where a cell's patch lies on its scan, in level-0 pixels, and how much is padding."""

    left: int
    top: int
    size: int
    pad_left: int
    pad_top: int
    pad_right: int
    pad_bottom: int

    @property
    def padded(self) -> bool:
        return any((self.pad_left, self.pad_top, self.pad_right, self.pad_bottom))

    def describe_padding(self) -> str:
        return (
            f"left={self.pad_left}, top={self.pad_top}, "
            f"right={self.pad_right}, bottom={self.pad_bottom}"
        )


@dataclass(frozen=True)
class Patch:
    """A stored patch: its storage name, geometry (None for pre-cropped cells) and background."""

    name: str
    geometry: PatchGeometry | None
    background: str


def patch_side_px(study: Study, scan: Scan) -> int:
    """The study's patch side in level-0 pixels of this scan."""
    if study.patch_size_um and scan.mpp_x:
        return max(16, round(study.patch_size_um / scan.mpp_x))
    return study.patch_size_px


def patch_geometry(cell: Cell) -> PatchGeometry:
    return geometry_at(cell.study, cell.scan, cell.x, cell.y)


def geometry_at(study: Study, scan: Scan, x: int, y: int) -> PatchGeometry:
    """The study's patch square centred on (x, y) of the scan, with its padding."""
    size = patch_side_px(study, scan)
    left, top = x - size // 2, y - size // 2
    return PatchGeometry(
        left=left,
        top=top,
        size=size,
        pad_left=max(0, -left),
        pad_top=max(0, -top),
        pad_right=max(0, left + size - scan.width),
        pad_bottom=max(0, top + size - scan.height),
    )


def patch_name(cell: Cell, geometry: PatchGeometry) -> str:
    """Checksum, position, size and background: a change of any of them is another patch."""
    background = settings.PATCH_BACKGROUND.lstrip("#").lower()
    return f"patches/{cell.scan.sha256[:32]}/{cell.x}_{cell.y}_{geometry.size}px_{background}.png"


def cut_patch_png(cell: Cell, geometry: PatchGeometry) -> bytes:
    """The patch as PNG bytes: level-0 pixels composed over the background colour.

    OpenSlide returns transparent pixels outside the scan, so composing over an opaque
    background fills exactly the padding. The PNG carries no text chunks or other metadata.
    """
    image = patch_image(cell.scan, geometry)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


def patch_image(scan: Scan, geometry: PatchGeometry) -> Image.Image:
    """The level-0 pixels of a patch square as RGB, the padding in the background colour."""
    slide = slide_handles.get(scan).slide
    region = slide.read_region((geometry.left, geometry.top), 0, (geometry.size, geometry.size))
    background = Image.new("RGBA", region.size, ImageColor.getrgb(settings.PATCH_BACKGROUND))
    return Image.alpha_composite(background, region).convert("RGB")


CONTEXT_FACTOR = 4  # the context view spans this many patch sides
CONTEXT_SIDE_PX = 600  # and is shown this large


def context_png(cell: Cell) -> bytes:
    """The scan around a cell's patch, CONTEXT_FACTOR patch sides square, scaled to
    CONTEXT_SIDE_PX with the patch outlined: what an adjudicator looks at beside the patch.
    Read from the pyramid level nearest the scale, so its cost does not grow with the factor."""
    if cell.scan_id is None:
        raise DomainError(f"Cell {cell.pk} has no scan around it, only a patch.", field="cell")
    slide = slide_handles.get(cell.scan).slide
    span = patch_side_px(cell.study, cell.scan) * CONTEXT_FACTOR
    downsample = span / CONTEXT_SIDE_PX
    level = slide.get_best_level_for_downsample(max(1.0, downsample))
    level_downsample = slide.level_downsamples[level]
    left, top = cell.x - span // 2, cell.y - span // 2
    read = max(1, round(span / level_downsample))
    region = slide.read_region((left, top), level, (read, read))
    background = Image.new("RGBA", region.size, ImageColor.getrgb(settings.PATCH_BACKGROUND))
    image = Image.alpha_composite(background, region).convert("RGB")
    image = image.resize((CONTEXT_SIDE_PX, CONTEXT_SIDE_PX), Image.Resampling.LANCZOS)
    inner = CONTEXT_SIDE_PX / CONTEXT_FACTOR
    start = (CONTEXT_SIDE_PX - inner) / 2
    ImageDraw.Draw(image).rectangle(
        (start, start, start + inner, start + inner), outline=(255, 214, 0), width=2
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


def ensure_patch(cell: Cell) -> Patch:
    """The cell's stored patch, cut now if it is missing."""
    if cell.scan_id is None:
        if not cell.patch:
            raise DomainError(f"Cell {cell.pk} has neither a scan nor a patch.", field="cell")
        return Patch(cell.patch.name, None, settings.PATCH_BACKGROUND)
    geometry = patch_geometry(cell)
    name = patch_name(cell, geometry)
    if cell.cut_patch != name or not default_storage.exists(name):
        store_bytes(name, cut_patch_png(cell, geometry))
        Cell.objects.filter(pk=cell.pk).update(cut_patch=name)
        cell.cut_patch = name
    return Patch(name, geometry, settings.PATCH_BACKGROUND)


def cut_missing_patches(scan_id: int) -> int:
    """Cut the patch of every labelled cell of the scan that lacks a current one; the count."""
    cells = (
        Cell.objects.filter(scan_id=scan_id, pk__in=Label.objects.values("cell"))
        .select_related("scan", "study")
        .order_by("pk")
    )
    made = 0
    for cell in cells:
        leases.stop_if_shutting_down()
        if cell.cut_patch != patch_name(cell, patch_geometry(cell)):
            ensure_patch(cell)
            made += 1
    return made


def run_batch(batch_id: int) -> int:
    """Cut a queued batch under a lease (core.leases); the number of patches cut. A batch
    delivered twice cuts once; one whose worker died is cut again from the start."""
    batch = PatchBatch.objects.filter(pk=batch_id).first()
    if batch is None:  # done already
        return 0
    owner = leases.new_owner()
    if leases.claim(PatchBatch, batch.pk, [PatchBatch.Status.QUEUED], owner) is None:
        return 0
    with leases.Lease(PatchBatch, batch.pk, owner) as lease:
        try:
            made = cut_missing_patches(batch.scan_id)
        except leases.ShuttingDown as stop:  # queued again, cut when a worker is back
            leases.end_stopped(leases.kind_of(PatchBatch), batch.pk, owner, str(stop))
            return 0
        except Exception as exc:  # recorded on the batch; a missing patch is cut on demand
            lease.finish(
                status=PatchBatch.Status.FAILED,
                error=failures.describe(exc, "Cutting the scan's patches")[:2000],
                finished_at=timezone.now(),
            )
            raise
        lease.mine().delete()
    return made


def remove_partials(batch: PatchBatch) -> None:
    """Delete the partial files of patches whose writer died (`store_bytes` writes each in one
    go, so a partial file older than a lease is no one's)."""
    scan = Scan.objects.filter(pk=batch.scan_id).first()
    if scan is None:
        return
    try:
        folder = Path(default_storage.path(f"patches/{scan.sha256[:32]}"))
    except NotImplementedError:  # object stores receive whole objects only
        return
    leases.remove_stale_partials(folder, leases.lease_length())
