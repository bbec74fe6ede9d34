"""Registering scan files: read them with OpenSlide, check them whole, store them, record them.

A file is inspected completely before anything is written, and the stored copy is removed again
if the database row cannot be made, so a refused file leaves neither a row nor a stored file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import openslide
import tifffile
from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils.text import get_valid_filename
from PIL import Image

from core.errors import DomainError
from core.files import fit_file_name

from . import access
from .models import Patient, Scan, Study

log = logging.getLogger(__name__)

HASH_CHUNK = 8 * 1024 * 1024
# What checking a file may cost, whatever size it claims. A photograph is decoded whole (and
# served from memory whole), so its pixels are capped; a whole-slide image is read tile by tile,
# so its tiles are capped, and only PROBE_GRID x PROBE_GRID windows of PROBE_SIDE px are
# decoded on its largest and its smallest level.
MAX_PHOTO_PIXELS = 36_000_000
MAX_TILE_SIDE = 2048
MAX_TIFF_PAGES = 256
PROBE_SIDE = 512
PROBE_GRID = 3
# A whole-slide image needs a pyramid for its tiles to be cheap: the viewer's coarse tiles are
# cut from the smallest level, so it must be small, and each level at most MAX_LEVEL_STEP times
# smaller than the one above, so a tile never reads more than MAX_LEVEL_STEP^2 tiles' worth.
MAX_SMALLEST_LEVEL_SIDE = 4096
MAX_LEVEL_STEP = 16
# Suffixes of slide and image formats, by which the slide is found among the files of a .zip or
# an uploaded folder.
SLIDE_SUFFIXES = {
    ".bif", ".bmp", ".czi", ".dcm", ".jpeg", ".jpg", ".mrxs", ".ndpi", ".png", ".scn", ".svs",
    ".svslide", ".tif", ".tiff", ".vms", ".vmu",
}  # fmt: skip
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


def import_roots_for(user, study: Study) -> list[Path]:
    """The server folders from which `user` may register files into `study`.

    The import roots (`SCAN_IMPORT_ROOTS`) are shared by every study, so only a site
    administrator (a superuser) may name any file under them. A study's coordinators and admins
    may name files under the study's own folder in each root, `ROOT/STUDY-NAME/`, which the
    operator fills for that study: a file meant for another study is outside it.
    """
    roots = [Path(root).resolve() for root in settings.SCAN_IMPORT_ROOTS]
    if user is not None and user.is_superuser:
        return roots
    return [root / study.name for root in roots]


def check_import_path(path: str | Path, roots: list[Path] | None = None) -> Path:
    """Resolve a server-side path and refuse it unless it lies inside one of `roots` (by default
    the configured import roots); symbolic links are followed first, so none leads out."""
    try:
        resolved = Path(path).resolve()
        if roots is None:
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
    fallback (Pillow). The cost is bounded by the file's real size, not by the size it claims:
    a TIFF's directories are checked first (its data inside the file, tiles of bounded size),
    then a few windows of the largest and the smallest level are decoded.
    """
    size = path.stat().st_size
    if size == 0:
        raise ScanError(f"{display_name}: the file is empty")
    if _looks_like_tiff(path):
        _check_tiff_layout(path, size, display_name)
    try:
        slide = openslide.OpenSlide(str(path))
        kind = Scan.Kind.WHOLE_SLIDE
    except openslide.OpenSlideUnsupportedFormatError:
        slide = _open_photo(path, display_name)
        kind = Scan.Kind.PHOTO
    except openslide.OpenSlideError as exc:
        if "unsupported" in str(exc).lower():
            reason = "its format or compression is not supported by OpenSlide"
        else:
            reason = "corrupt slide, OpenSlide could not read it"
        raise ScanError(f"{display_name}: {reason} ({exc})") from None
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
    if kind == Scan.Kind.WHOLE_SLIDE:
        _check_pyramid(slide, display_name)
    try:
        for level in sorted({0, slide.level_count - 1}):
            downsample = slide.level_downsamples[level]
            for x, y, w, h in probe_windows(*slide.level_dimensions[level]):
                location = (int(x * downsample), int(y * downsample))
                slide.read_region(location, level, (w, h)).load()
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


def _check_tiff_layout(path: Path, size: int, display_name: str) -> None:
    """Refuse a TIFF whose image data lies past its end, or whose tiles are too large to decode.

    Read from the TIFF directories alone (tifffile), before any pixel is decoded. A directory
    tifffile cannot parse is left to OpenSlide, which then names the file corrupt or reads it.
    A file cut off before one of its directories is refused as truncated: tifffile stops at the
    last whole directory, and OpenSlide would open the levels before the cut as if they were all.
    """
    try:
        with tifffile.TiffFile(path) as tiff:
            page = None
            for index, page in enumerate(tiff.pages):
                if index == MAX_TIFF_PAGES:
                    raise ScanError(
                        f"{display_name}: more than {MAX_TIFF_PAGES} images in one TIFF file"
                    )
                _check_tiff_page(page, index, size, display_name)
            following = _next_directory(tiff, page) if page is not None else 0
            if following >= size:
                raise ScanError(
                    f"{display_name}: truncated file: its next image directory starts at byte "
                    f"{following:,}, but the file has only {size:,} bytes"
                )
    except ScanError:
        raise
    except Exception as exc:  # tifffile raises many kinds on a broken directory
        log.debug("tifffile could not parse %s: %s", display_name, exc)


def _next_directory(tiff: tifffile.TiffFile, page) -> int:
    """Where the TIFF directory after `page` starts (0 for none), read from the file."""
    layout, handle = tiff.tiff, tiff.filehandle
    handle.seek(page.offset)
    (tags,) = struct.unpack(layout.tagnoformat, handle.read(layout.tagnosize))
    handle.seek(page.offset + layout.tagnosize + tags * layout.tagsize)
    (following,) = struct.unpack(layout.offsetformat, handle.read(layout.offsetsize))
    return following


def _check_tiff_page(page, index: int, size: int, display_name: str) -> None:
    if page.is_tiled and max(page.tilewidth, page.tilelength) > MAX_TILE_SIDE:
        raise ScanError(
            f"{display_name}: image {index} has tiles of {page.tilewidth}x{page.tilelength} px; "
            f"tiles of at most {MAX_TILE_SIDE}x{MAX_TILE_SIDE} px are accepted"
        )
    ends = [
        offset + count
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False)
        if count
    ]
    if ends and max(ends) > size:
        raise ScanError(
            f"{display_name}: truncated file: image {index}'s data runs to byte {max(ends):,}, "
            f"but the file has only {size:,} bytes"
        )


def _check_pyramid(slide: openslide.AbstractSlide, display_name: str) -> None:
    """Refuse a whole-slide image whose tiles would each cost what the whole image claims."""
    dimensions = slide.level_dimensions
    smallest = dimensions[-1]
    how = "store it as a pyramidal TIFF (for example `vips tiffsave --tile --pyramid`)"
    if max(smallest) > MAX_SMALLEST_LEVEL_SIDE:
        raise ScanError(
            f"{display_name}: no pyramid down to a small level: its smallest level is "
            f"{smallest[0]}x{smallest[1]} px, more than {MAX_SMALLEST_LEVEL_SIDE} px a side; {how}"
        )
    downsamples = slide.level_downsamples
    for level in range(1, len(downsamples)):
        step = downsamples[level] / downsamples[level - 1]
        if step > MAX_LEVEL_STEP:
            raise ScanError(
                f"{display_name}: pyramid levels {level - 1} and {level} are {step:.0f} times "
                f"apart, more than {MAX_LEVEL_STEP}; {how}"
            )


def probe_windows(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of up to PROBE_GRID^2 windows of at most PROBE_SIDE px spread over an image:
    its corners, the middles of its edges and its centre."""
    w, h = min(PROBE_SIDE, width), min(PROBE_SIDE, height)
    steps = range(PROBE_GRID)
    xs = sorted({(width - w) * i // (PROBE_GRID - 1) for i in steps})
    ys = sorted({(height - h) * i // (PROBE_GRID - 1) for i in steps})
    return [(x, y, w, h) for y in ys for x in xs]


def _positive_float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number and number > 0 else None


@dataclass(frozen=True)
class SlideFiles:
    """The files of one scan: the main file OpenSlide opens and every file of the scan (the
    main one included) as sorted paths relative to the main file's folder."""

    main: Path
    members: tuple[str, ...]

    @property
    def folder(self) -> Path:
        return self.main.parent

    @property
    def companions(self) -> list[str]:
        return [member for member in self.members if member != self.main.name]


def slide_files(main: Path) -> SlideFiles:
    """The files that go with `main`: a MIRAX slide's folder of the same stem (every file under
    it), a DICOM file's sibling .dcm files (one series per folder), else the file alone."""
    folder = main.parent
    suffix = main.suffix.lower()
    if suffix == ".mrxs":
        data = folder / main.stem
        if not data.is_dir():
            raise ScanError(
                f"{main.name}: a MIRAX slide needs its folder {main.stem}/ (with Slidedat.ini "
                "and the Data files) beside it"
            )
        members = [main.name] + [
            path.relative_to(folder).as_posix() for path in data.rglob("*") if path.is_file()
        ]
    elif suffix == ".dcm":
        members = [path.name for path in folder.iterdir() if _is_dicom(path)]
    else:
        members = [main.name]
    inside = folder.resolve()
    for member in members:
        if not (folder / member).resolve().is_relative_to(inside):
            raise ScanError(f"{member}: a symbolic link out of the slide's folder")
    return SlideFiles(main, tuple(sorted(members)))


def _is_dicom(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".dcm"


def files_digest(files: SlideFiles) -> str:
    """The identity of a scan: the sha256 of its file, or for a multi-file scan the sha256 of
    the lines `SHA256  NAME` (as sha256sum prints them) of its files in the order of their
    names, the names relative to the main file's folder. Renaming a file of a series makes
    another scan; the same files under the same names are recognised however they came."""
    if len(files.members) == 1:
        return sha256_of(files.main)
    lines = "".join(f"{sha256_of(files.folder / member)}  {member}\n" for member in files.members)
    return hashlib.sha256(lines.encode()).hexdigest()


def safe_file_name(name: str) -> str:
    """A name fit to store: no folder part, no characters a file system or URL trips on."""
    try:
        return fit_file_name(get_valid_filename(PurePosixPath(name.replace("\\", "/")).name))
    except SuspiciousFileOperation:
        return "upload"


def safe_parts(path: str) -> list[str] | None:
    """The parts of a relative path (`boxes/boxes_0.dcm`), each made safe; None for a path
    that is absolute or climbs out with `..`."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or ":" in (pure.parts or ("",))[0]:
        return None
    parts = [safe_file_name(part) for part in pure.parts if part != "."]
    return parts or None


def extract_zip(archive: Path, target: Path, shown: str) -> None:
    """Unpack a .zip into `target`, refusing (naming the entry) a path out of the archive, a
    link, an encrypted entry, more than SCAN_ZIP_MAX_ENTRIES entries or more than
    SCAN_ZIP_MAX_BYTES unpacked; the sizes the archive claims are not trusted."""
    limit, max_entries = settings.SCAN_ZIP_MAX_BYTES, settings.SCAN_ZIP_MAX_ENTRIES
    try:
        with zipfile.ZipFile(archive) as bundle:
            entries = bundle.infolist()
            if len(entries) > max_entries:
                raise ScanError(
                    f"{shown}: {len(entries):,} entries, more than {max_entries:,} "
                    "(setting SCAN_ZIP_MAX_ENTRIES)"
                )
            written = 0
            for entry in entries:
                written = _extract_entry(bundle, entry, target, shown, written, limit)
    except ScanError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error):
        raise ScanError(f"{shown}: not a readable zip archive (damaged or unsupported)") from None
    except OSError as exc:  # an entry that clashes with another (a file and a folder of a name)
        raise ScanError(f"{shown}: cannot be unpacked ({exc.strerror or exc})") from None


def _extract_entry(bundle, entry: zipfile.ZipInfo, target: Path, shown: str, written, limit):
    parts = safe_parts(entry.filename)
    if parts is None:
        raise ScanError(f"{shown}: the entry {entry.filename[:120]!r} points outside the archive")
    if stat.S_ISLNK(entry.external_attr >> 16):
        raise ScanError(f"{shown}: the entry {entry.filename[:120]!r} is a symbolic link")
    if entry.flag_bits & 0x1:
        raise ScanError(f"{shown}: the entry {entry.filename[:120]!r} is encrypted")
    if entry.is_dir():
        return written
    destination = target.joinpath(*parts)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with bundle.open(entry) as source, destination.open("wb") as out:
        while piece := source.read(HASH_CHUNK):
            written += len(piece)
            if written > limit:
                raise ScanError(
                    f"{shown}: unpacks to more than {limit:,} bytes (setting SCAN_ZIP_MAX_BYTES)"
                )
            out.write(piece)
    return written


def find_slide(folder: Path, shown: str) -> Path:
    """The main file of the one slide in an unpacked zip or an uploaded folder: a .mrxs (its
    folder of the same stem belongs to it), one .dcm per folder of DICOM files, or a file of a
    slide or image format; a lone file of another name counts as the slide. None, or several,
    is refused naming what was found."""
    found = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith((".", "__MACOSX")) for part in path.relative_to(folder).parts)
    )
    mirax = [path for path in found if path.suffix.lower() == ".mrxs"]
    mirax_folders = [path.parent / path.stem for path in mirax]
    rest = [
        path
        for path in found
        if path not in mirax and not any(path.is_relative_to(data) for data in mirax_folders)
    ]
    dicom = {path.parent: path for path in reversed(rest) if path.suffix.lower() == ".dcm"}
    others = [path for path in rest if path.suffix.lower() in SLIDE_SUFFIXES - {".dcm"}]
    slides = mirax + sorted(dicom.values()) + others
    if not slides and len(rest) == 1:
        slides = rest
    names = [path.relative_to(folder).as_posix() for path in found]
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    shown_names = ", ".join(names[:10]) + more
    if not slides:
        raise ScanError(f"{shown}: no slide file in it (found {shown_names or 'nothing'})")
    if len(slides) > 1:
        listed = ", ".join(path.relative_to(folder).as_posix() for path in slides[:10])
        raise ScanError(f"{shown}: {len(slides)} slides in one scan ({listed}); send one at a time")
    return slides[0]


def ingest_scan(
    path: str | Path,
    *,
    study: Study,
    patient_code: str | None = None,
    cohort: str = "",
    user=None,
    display_name: str | None = None,
    check_roots: bool = True,
    roots: list[Path] | None = None,
) -> IngestResult:
    """Register one scan in a study, or recognise it (by checksum) as already registered.

    `path` is the scan's main file (its companions are taken from beside it, `slide_files`) or
    a .zip holding one slide. `user` is who registers it; None is the operator on the command
    line. A file already known is attached only if `user` sees that scan already (see
    `_attach_known`). `check_roots` is off only for files the server received itself
    (uploads), which live in a temporary folder rather than an import root; `roots` narrows
    the import roots (see `import_roots_for`).
    """
    field = "path" if check_roots else "file"
    path = check_import_path(path, roots) if check_roots else Path(path)
    name = display_name or path.name
    options = {"study": study, "patient_code": patient_code, "cohort": cohort, "user": user}
    if path.suffix.lower() != ".zip":
        files = slide_files(path)
        return _ingest_files(files, name if len(files.members) == 1 else None, field, options)
    with tempfile.TemporaryDirectory(prefix="cytomark-zip-") as folder:
        extract_zip(path, Path(folder), name)
        main = find_slide(Path(folder), name)
        return _ingest_files(slide_files(main), None, field, options)


def ingest_folder(received: list[tuple[str, Path]], **options) -> IngestResult:
    """Register the scan in uploaded files, each named by its path in the uploaded folder: one
    file (a slide, or a .zip of one), or the files of a folder holding one slide. The files are
    moved, not copied; the caller removes what is left."""
    if len(received) == 1 and "/" not in received[0][0]:
        name, path = received[0]
        with tempfile.TemporaryDirectory(prefix="cytomark-upload-", dir=path.parent) as folder:
            target = Path(folder) / name
            os.replace(path, target)
            return ingest_scan(target, display_name=name, check_roots=False, **options)
    with tempfile.TemporaryDirectory(prefix="cytomark-upload-", dir=received[0][1].parent) as tree:
        for name, path in received:
            target = Path(tree).joinpath(*(safe_parts(name) or [safe_file_name(name)]))
            if target.exists():
                raise ScanError(f"{name}: sent twice in one folder", field="uploads")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        main = find_slide(Path(tree), "the uploaded folder")
        return ingest_scan(main, check_roots=False, **options)


def _ingest_files(files: SlideFiles, name: str | None, field: str, options) -> IngestResult:
    study, user = options["study"], options["user"]
    name = name or files.main.name
    digest = files_digest(files)
    existing = Scan.objects.filter(sha256=digest).first()
    if existing:
        return _attach_known(existing, study, user, options["patient_code"], name, field)

    facts = inspect_slide(files.main, name)
    stored = _store(files, name, digest)
    try:
        with transaction.atomic():
            patient = None
            if options["patient_code"]:
                patient, _ = Patient.objects.get_or_create(
                    code=options["patient_code"], defaults={"cohort": options["cohort"]}
                )
            scan = Scan.objects.create(
                file=stored[0],
                companions=files.companions,
                original_name=name,
                kind=facts.kind,
                vendor=facts.vendor,
                width=facts.width,
                height=facts.height,
                level_count=facts.level_count,
                mpp_x=facts.mpp_x,
                mpp_y=facts.mpp_y,
                size_bytes=sum((files.folder / member).stat().st_size for member in files.members),
                sha256=digest,
                patient=patient,
                added_by=user,
            )
            study.scans.add(scan)
    except IntegrityError:
        # Another request registered the same files a moment ago: the same rules as for any
        # known file apply to it. Its stored files have the same names as ours.
        existing = Scan.objects.filter(sha256=digest).first()
        if existing is None:
            _delete_stored(stored)
            raise
        _delete_stored(set(stored) - set(stored_names(existing)))
        return _attach_known(existing, study, user, options["patient_code"], name, field)
    except BaseException:
        _delete_stored(stored)
        raise
    log.info("registered scan %s (%s) in study %s", scan.pk, name, study.name)
    return IngestResult(scan, created=True)


def _store(files: SlideFiles, name: str, digest: str) -> list[str]:
    """Store the files under `scans/<aa>/<digest>/`, the main one first (as `name`), each
    companion at its path relative to the main file, so OpenSlide finds them together. Files
    left there by an attempt that died are replaced: the folder is named by the checksum."""
    prefix = f"scans/{digest[:2]}/{digest}"
    wanted = [(files.main, f"{prefix}/{name}")] + [
        (files.folder / member, f"{prefix}/{member}") for member in files.companions
    ]
    if not Scan.objects.filter(sha256=digest).exists():
        _delete_stored([target for _, target in wanted])
    stored = []
    try:
        for source, target in wanted:
            with source.open("rb") as handle:
                stored.append(default_storage.save(target, File(handle, name=source.name)))
        if stored[1:] != [target for _, target in wanted[1:]]:
            raise ScanError(f"{name}: being registered by another request; try again shortly")
    except BaseException:
        _delete_stored(stored)
        raise
    return stored


def stored_names(scan: Scan) -> list[str]:
    """The storage names of all of a scan's files, the main one first."""
    folder = posixpath.dirname(scan.file.name)
    return [scan.file.name] + [posixpath.join(folder, member) for member in scan.companions]


def _delete_stored(names) -> None:
    for stored_name in names:
        default_storage.delete(stored_name)


def _attach_known(
    scan: Scan, study: Study, user, patient_code: str | None, name: str, field: str
) -> IngestResult:
    """Add an already registered scan to `study`, if `user` may see it already.

    Having the same bytes is no proof of the right to see a scan (a blinded rater may have
    saved a file of the study she rates, an outsider may guess a public one): attaching it
    would show its tiles, patient and studies. So a scan the user does not see is refused
    with a message that names nothing of it, and a patient mismatch names no patient. A site
    administrator (or the operator, `user` None) may attach any known scan, one left in no
    study included.
    """
    may_attach = (
        user is None or user.is_superuser or access.visible_scans(user).filter(pk=scan.pk).exists()
    )
    if not may_attach:
        raise ScanError(
            f"{name}: cannot be registered in study {study.name}: the same file is already "
            "registered and you may not see it; ask a site administrator to add it to this study",
            field=field,
        )
    if patient_code and scan.patient and scan.patient.code != patient_code:
        raise ScanError(
            f"{name}: this file is already registered as scan {scan.pk} of another patient, "
            f"not {patient_code}",
            field="patient",
        )
    study.scans.add(scan)
    return IngestResult(scan, created=False)


def local_path(scan: Scan) -> Path:
    """A local file path for OpenSlide: the stored file itself, or a cached copy of it with its
    companions beside it (a DICOM series, a MIRAX folder), checked against the scan's sha256."""
    try:
        stored = Path(scan.file.path)
        # A storage may name a local path and keep the bytes elsewhere (in memory, say).
        if stored.is_file():
            return stored
    except NotImplementedError:
        pass
    cached_folder = Path(settings.SCAN_CACHE_DIR) / scan.sha256
    cached = cached_folder / scan.original_name
    if not cached.exists():
        cached_folder.parent.mkdir(parents=True, exist_ok=True)
        # A private temporary folder per process: two processes missing the cache at once each
        # write their own copy, and the rename puts a whole set of files in place either way.
        partial = Path(tempfile.mkdtemp(dir=cached_folder.parent, suffix=".part"))
        try:
            members = [(scan.file.name, scan.original_name)] + [
                (stored, member)
                for stored, member in zip(stored_names(scan)[1:], scan.companions, strict=True)
            ]
            for stored, member in members:
                target = partial / member
                target.parent.mkdir(parents=True, exist_ok=True)
                with default_storage.open(stored, "rb") as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, HASH_CHUNK)
            files = SlideFiles(
                partial / scan.original_name, tuple(sorted(member for _, member in members))
            )
            if files_digest(files) != scan.sha256:
                raise ScanError(f"{scan.original_name}: the stored copy does not match its sha256")
            try:
                os.rename(partial, cached_folder)
            except OSError:  # another process put its copy in place first
                if not cached.exists():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return cached
