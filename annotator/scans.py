"""Registering scan files: read them with OpenSlide, check them whole, store them, record them.

A file is inspected completely before anything is written, and the stored copy is removed again
if the database row cannot be made, so a refused file leaves neither a row nor a stored file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import openslide
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from PIL import Image

from .errors import DomainError
from .models import Patient, Scan, Study

log = logging.getLogger(__name__)

HASH_CHUNK = 8 * 1024 * 1024
# Decompression-bomb guard for photographs opened through Pillow: a field-of-view photo is far
# smaller than this; whole-slide images go through OpenSlide, which reads them tile by tile.
MAX_PHOTO_PIXELS = 400_000_000
TIFF_SIGNATURES = {b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"}


class ScanError(DomainError):
    """A file that cannot be registered as a scan; the message says which file and why."""

    def __init__(self, message: str, field: str = "file"):
        super().__init__(message, field=field)


@dataclass(frozen=True)
class SlideFacts:
    """What OpenSlide tells about a readable file."""

    kind: str
    vendor: str
    width: int
    height: int
    level_count: int
    mpp_x: float | None
    mpp_y: float | None


@dataclass(frozen=True)
class IngestResult:
    scan: Scan
    created: bool


def check_import_path(path: str | Path) -> Path:
    """Resolve a server-side path and refuse it unless it lies inside a configured import root."""
    try:
        resolved = Path(path).resolve()
        roots = [Path(root).resolve() for root in settings.SCAN_IMPORT_ROOTS]
        if not any(resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(str(root) for root in roots) or "(none configured)"
            raise ScanError(
                f"{path}: outside the import roots; scans may only be read from {allowed} "
                "(setting SCAN_IMPORT_ROOTS)",
                field="path",
            )
        if not resolved.is_file():
            raise ScanError(f"{path}: no such file", field="path")
    except (OSError, RuntimeError) as exc:
        # The file system refuses the path itself: a name too long, a loop of links (which
        # Python 3.11's resolve() reports as RuntimeError).
        reason = getattr(exc, "strerror", None) or "a loop of symbolic links"
        shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:120]}..."
        raise ScanError(f"{shown}: not a usable path ({reason})", field="path") from None
    return resolved


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_slide(path: Path, display_name: str) -> SlideFacts:
    """Open a file as a scan and read it enough to prove it is whole.

    Whole-slide formats go through OpenSlide; plain photographs through OpenSlide's image
    fallback (Pillow). The smallest pyramid level is decoded in full and a region at the centre
    of level 0 too, which catches truncated files whose header still reads.
    """
    size = path.stat().st_size
    if size == 0:
        raise ScanError(f"{display_name}: the file is empty")
    try:
        slide = openslide.OpenSlide(str(path))
        kind = Scan.Kind.WHOLE_SLIDE
    except openslide.OpenSlideUnsupportedFormatError:
        slide = _open_photo(path, display_name)
        kind = Scan.Kind.PHOTO
    except openslide.OpenSlideError as exc:
        raise ScanError(
            f"{display_name}: corrupt slide, OpenSlide could not read it ({exc})"
        ) from None
    try:
        return _read_facts(slide, kind, display_name)
    finally:
        slide.close()


def _open_photo(path: Path, display_name: str) -> openslide.ImageSlide:
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PHOTO_PIXELS:
                raise ScanError(
                    f"{display_name}: a {image.width}x{image.height} photograph is too large; "
                    "store it as a pyramidal whole-slide image"
                )
            image.load()
    except ScanError:
        raise
    except Image.DecompressionBombError:
        raise ScanError(f"{display_name}: image too large to open safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if _looks_like_tiff(path) or "truncated" in text or "decoder error" in text:
            reason = f"corrupt or truncated image, its pixels cannot be read ({text})"
        elif "cannot identify" in text:
            reason = (
                "not an image in a supported format (OpenSlide formats such as TIFF, SVS, NDPI, "
                "MRXS, or a JPEG/PNG photograph)"
            )
        else:
            reason = f"unreadable image ({text})"
        raise ScanError(f"{display_name}: {reason}") from None
    return openslide.ImageSlide(str(path))


def _looks_like_tiff(path: Path) -> bool:
    """True for a TIFF signature (classic or BigTIFF, either byte order)."""
    with path.open("rb") as handle:
        return handle.read(4) in TIFF_SIGNATURES


def _read_facts(slide: openslide.AbstractSlide, kind: str, display_name: str) -> SlideFacts:
    width, height = slide.dimensions
    if width <= 0 or height <= 0:
        raise ScanError(f"{display_name}: the image has no pixels")
    try:
        last = slide.level_count - 1
        slide.read_region((0, 0), last, slide.level_dimensions[last]).load()
        probe = min(512, width, height)
        slide.read_region(((width - probe) // 2, (height - probe) // 2), 0, (probe, probe)).load()
    except (openslide.OpenSlideError, OSError) as exc:
        raise ScanError(
            f"{display_name}: corrupt or truncated, its pixels cannot be read ({exc})"
        ) from None
    props = slide.properties
    return SlideFacts(
        kind=kind,
        vendor=props.get(openslide.PROPERTY_NAME_VENDOR, "image")
        if kind == Scan.Kind.WHOLE_SLIDE
        else "image",
        width=width,
        height=height,
        level_count=slide.level_count,
        mpp_x=_positive_float(props.get(openslide.PROPERTY_NAME_MPP_X)),
        mpp_y=_positive_float(props.get(openslide.PROPERTY_NAME_MPP_Y)),
    )


def _positive_float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number and number > 0 else None


def ingest_scan(
    path: str | Path,
    *,
    study: Study,
    patient_code: str | None = None,
    cohort: str = "",
    user=None,
    display_name: str | None = None,
    check_roots: bool = True,
) -> IngestResult:
    """Register one scan file in a study, or recognise it (by checksum) as already registered.

    `check_roots` is off only for files the server received itself (uploads), which live in a
    temporary folder rather than an import root.
    """
    path = check_import_path(path) if check_roots else Path(path)
    name = display_name or path.name
    digest = sha256_of(path)
    existing = Scan.objects.filter(sha256=digest).first()
    if existing:
        _check_same_patient(existing, patient_code, name)
        study.scans.add(existing)
        return IngestResult(existing, created=False)

    facts = inspect_slide(path, name)
    # Slides are multi-file in some formats; Cytomark stores single-file ones as they are.
    with path.open("rb") as handle:
        storage_name = default_storage.save(
            f"scans/{digest[:2]}/{digest}/{name}", File(handle, name=name)
        )
    try:
        with transaction.atomic():
            patient = None
            if patient_code:
                patient, _ = Patient.objects.get_or_create(
                    code=patient_code, defaults={"cohort": cohort}
                )
            scan = Scan.objects.create(
                file=storage_name,
                original_name=name,
                kind=facts.kind,
                vendor=facts.vendor,
                width=facts.width,
                height=facts.height,
                level_count=facts.level_count,
                mpp_x=facts.mpp_x,
                mpp_y=facts.mpp_y,
                size_bytes=path.stat().st_size,
                sha256=digest,
                patient=patient,
                added_by=user,
            )
            study.scans.add(scan)
    except IntegrityError:
        default_storage.delete(storage_name)
        # Another request registered the same file a moment ago: use that one.
        existing = Scan.objects.filter(sha256=digest).first()
        if existing is None:
            raise
        study.scans.add(existing)
        return IngestResult(existing, created=False)
    except BaseException:
        default_storage.delete(storage_name)
        raise
    log.info("registered scan %s (%s) in study %s", scan.pk, name, study.name)
    return IngestResult(scan, created=True)


def _check_same_patient(scan: Scan, patient_code: str | None, name: str) -> None:
    if patient_code and scan.patient and scan.patient.code != patient_code:
        raise ScanError(
            f"{name}: this file is already registered as scan {scan.pk} of patient "
            f"{scan.patient.code}, not {patient_code}",
            field="patient",
        )


def local_path(scan: Scan) -> Path:
    """A local file path for OpenSlide: the stored file itself, or a cached copy of it."""
    try:
        return Path(scan.file.path)
    except NotImplementedError:
        pass
    cached = Path(settings.SCAN_CACHE_DIR) / scan.sha256 / scan.original_name
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        # A private temporary name per process: two processes missing the cache at once each
        # write their own copy, and the rename puts a whole file in place either way.
        handle, partial = tempfile.mkstemp(dir=cached.parent, suffix=".part")
        try:
            with scan.file.open("rb") as source, os.fdopen(handle, "wb") as target:
                shutil.copyfileobj(source, target, HASH_CHUNK)
            if sha256_of(Path(partial)) != scan.sha256:
                raise ScanError(f"{scan.original_name}: the stored copy does not match its sha256")
            os.replace(partial, cached)
        finally:
            Path(partial).unlink(missing_ok=True)
    return cached
