"""Resumable uploads of scan files by the tus 1.0.0 protocol (https://tus.io/protocols/resumable-upload).

Real scans are about a gigabyte: sent in one request they hold a web worker for the whole
transfer and start again from nothing when the connection drops. With tus the browser
(tus-js-client) creates an upload, sends the file in chunks (PATCH, each appended to a local
file), asks after a break how much arrived (HEAD) and resumes there; registering the scan
(`POST /api/v1/scans/` with `uploads`) then consumes the finished upload. It works the same on
the embedded profile's local disk and in production. For a deployment whose scans live in S3,
multipart uploads straight to the bucket with presigned URLs are the documented alternative
(docs/scans.md); they are not built.

Written here rather than taken from a package: no maintained tus server exists for Django
(django-tus supports Django up to 3.2, reads each chunk whole into memory and knows no owner of
an upload), and tusd is a separate Go service with its own storage and authentication. The
server side of the core protocol with the creation, termination and expiration extensions is
this module and a thin view (annotator/api/uploads.py).

Only the user who created an upload sees it; only a coordinator or admin of the study may
create one. Unfinished uploads expire; expired ones are removed whenever an upload is created.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from core.errors import ConflictError, DomainError, NotFoundError
from core.storage import remove_untouched

from . import access
from .models import ScanUpload, Study
from .scans import safe_file_name, safe_parts

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration"
CHUNK_CONTENT_TYPE = "application/offset+octet-stream"
READ_PIECE = 1024 * 1024


class UploadTooLargeError(DomainError):
    """An upload or a chunk over the configured limits (answered 413)."""

    status_code = 413


class UnsupportedChunkTypeError(DomainError):
    """A PATCH whose body is not `application/offset+octet-stream` (answered 415)."""

    status_code = 415


class VersionMismatchError(DomainError):
    """A request without `Tus-Resumable: 1.0.0` (answered 412, as the protocol asks)."""

    status_code = 412


def upload_dir() -> Path:
    """The local folder partial uploads grow in: SCAN_UPLOAD_DIR, or MEDIA_ROOT/uploads."""
    return Path(settings.SCAN_UPLOAD_DIR or Path(settings.MEDIA_ROOT) / "uploads")


def data_path(upload: ScanUpload) -> Path:
    return upload_dir() / str(upload.id)


def check_version(header: str | None) -> None:
    if header != TUS_VERSION:
        raise VersionMismatchError(
            f"Send the header Tus-Resumable: {TUS_VERSION} (got {header!r}); this server speaks "
            f"tus {TUS_VERSION} only.",
            field="Tus-Resumable",
        )


def parse_metadata(header: str) -> dict[str, str]:
    """The `Upload-Metadata` header: comma-separated `key base64(value)` pairs."""
    found = {}
    for pair in filter(None, (item.strip() for item in header.split(","))):
        key, _, encoded = pair.partition(" ")
        try:
            found[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise DomainError(
                f"Upload-Metadata: the value of {key[:40]!r} is not base64 of UTF-8 text.",
                field="Upload-Metadata",
            ) from None
    return found


def _parse_count(value: str | None, header: str) -> int:
    if value is None or not value.strip().isdigit():
        raise DomainError(f"{header} must be a whole number of bytes, not {value!r}.", field=header)
    return int(value.strip())


def safe_relative_path(path: str) -> str:
    """A relative path inside a folder upload (`boxes/boxes_0.dcm`), each part made safe;
    an absolute path or one with `..` is refused."""
    parts = safe_parts(path)
    if parts is None:
        raise DomainError(
            f"relative_path {path[:120]!r} must be a path inside the uploaded folder, "
            "without '..' or a leading '/'.",
            field="Upload-Metadata",
        )
    return "/".join(parts)


def create_upload(user, length_header: str | None, metadata_header: str) -> ScanUpload:
    """Start an upload of `Upload-Length` bytes into the study named in the metadata."""
    remove_expired()
    length = _parse_count(length_header, "Upload-Length")
    limit = settings.SCAN_UPLOAD_MAX_BYTES
    if length > limit:
        raise UploadTooLargeError(
            f"Upload-Length {length:,} bytes is over the limit of {limit:,} bytes "
            "(setting SCAN_UPLOAD_MAX_BYTES).",
            field="Upload-Length",
        )
    metadata = parse_metadata(metadata_header or "")
    for key in ("filename", "study"):
        if not metadata.get(key):
            raise DomainError(
                f"Upload-Metadata must name the {key} (base64 of its value).",
                field="Upload-Metadata",
            )
    study = access.visible_studies(user).filter(name=metadata["study"]).first()
    if study is None:
        raise NotFoundError(f"No study named {metadata['study'][:80]!r} among yours.")
    access.require_role(user, study, access.MANAGING_ROLES, "upload scans")
    relative = metadata.get("relative_path", "")
    upload = ScanUpload(
        user=user,
        study=study,
        filename=safe_file_name(metadata["filename"]),
        relative_path=safe_relative_path(relative) if relative else "",
        length=length,
        expires_at=timezone.now() + timedelta(hours=settings.SCAN_UPLOAD_EXPIRY_HOURS),
    )
    upload_dir().mkdir(parents=True, exist_ok=True)
    data_path(upload).touch()
    try:
        upload.save()
    except BaseException:
        data_path(upload).unlink(missing_ok=True)
        raise
    return upload


def _not_found(upload_id) -> NotFoundError:
    return NotFoundError(f"No upload {upload_id} of yours (it may have expired or been used).")


def get_upload(user, upload_id: uuid.UUID) -> ScanUpload:
    """The user's own unexpired upload, or NotFoundError (another user's reads as unknown)."""
    upload = ScanUpload.objects.filter(pk=upload_id, user=user).first()
    if upload is None or _expire_if_due(upload):
        raise _not_found(upload_id)
    return upload


def _expire_if_due(upload: ScanUpload) -> bool:
    if upload.expires_at > timezone.now():
        return False
    _remove(upload)
    return True


def _remove(upload: ScanUpload) -> None:
    data_path(upload).unlink(missing_ok=True)
    ScanUpload.objects.filter(pk=upload.pk).delete()


def remove_expired(now=None) -> int:
    """Remove every upload past its expiry, file and row, and what no upload owns in the upload
    folder any more once it is as old as an upload may live (the file of an upload whose study
    was deleted, the folder of a registration whose process died); the number of uploads
    removed."""
    now = now or timezone.now()
    expired = list(ScanUpload.objects.filter(expires_at__lte=now))
    for upload in expired:
        _remove(upload)
    if expired:
        log.info("removed %d expired upload(s)", len(expired))
    owned = {str(pk) for pk in ScanUpload.objects.values_list("pk", flat=True)}
    before = now - timedelta(hours=settings.SCAN_UPLOAD_EXPIRY_HOURS)
    remove_untouched(upload_dir(), before, keep=owned)
    return len(expired)


def terminate(user, upload_id: uuid.UUID) -> None:
    _remove(get_upload(user, upload_id))


def append(
    user,
    upload_id: uuid.UUID,
    *,
    offset_header: str | None,
    content_type: str,
    content_length: str | None,
    stream,
) -> ScanUpload:
    """Append a PATCH body at `Upload-Offset`, read from `stream` in small pieces.

    The upload's row is locked while the body is written (without waiting: a second PATCH of
    the same upload at once is answered 409), so two writers never interleave. If the client
    goes away in the middle, what arrived is kept and HEAD tells where to resume.
    """
    if content_type.split(";")[0].strip().lower() != CHUNK_CONTENT_TYPE:
        raise UnsupportedChunkTypeError(
            f"A PATCH must carry Content-Type: {CHUNK_CONTENT_TYPE}, not {content_type!r}.",
            field="Content-Type",
        )
    offset = _parse_count(offset_header, "Upload-Offset")
    announced = _parse_count(content_length, "Content-Length") if content_length else None
    chunk_limit = settings.SCAN_UPLOAD_CHUNK_MAX_BYTES
    if announced is not None and announced > chunk_limit:
        raise UploadTooLargeError(
            f"A PATCH body of {announced:,} bytes is over the limit of {chunk_limit:,} bytes "
            "(setting SCAN_UPLOAD_CHUNK_MAX_BYTES); send smaller chunks.",
            field="Content-Length",
        )
    try:
        with transaction.atomic():
            upload = (
                ScanUpload.objects.select_for_update(nowait=True)
                .filter(pk=upload_id, user=user)
                .first()
            )
            if upload is None or upload.expires_at <= timezone.now():
                raise _not_found(upload_id)
            _check_offset(upload, offset, announced)
            upload.offset += _write_body(upload, stream, announced, chunk_limit)
            upload.save(update_fields=["offset"])
    except DatabaseError:
        raise ConflictError(
            f"Upload {upload_id} is being written by another request; retry after it ends."
        ) from None
    return upload


def _check_offset(upload: ScanUpload, offset: int, announced: int | None) -> None:
    if offset != upload.offset:
        raise ConflictError(
            f"Upload-Offset {offset} does not match the {upload.offset} bytes received so far; "
            "ask with HEAD and resume from there.",
            current={"offset": upload.offset},
        )
    if announced is not None and offset + announced > upload.length:
        raise DomainError(
            f"The body of {announced:,} bytes at offset {offset:,} runs past the upload's "
            f"length of {upload.length:,} bytes.",
            field="Content-Length",
        )


def _write_body(upload: ScanUpload, stream, announced: int | None, chunk_limit: int) -> int:
    """Write the body at the upload's offset; the number of bytes written."""
    room = upload.length - upload.offset
    written = 0
    with data_path(upload).open("r+b") as handle:
        handle.seek(upload.offset)
        while True:
            try:
                piece = stream.read(READ_PIECE)
            except OSError:  # the client went away; keep what arrived
                break
            if not piece:
                break
            written += len(piece)
            if written > room or written > chunk_limit:
                handle.truncate(upload.offset)
                raise DomainError(
                    f"The body runs past the upload's length of {upload.length:,} bytes or "
                    f"the chunk limit of {chunk_limit:,} bytes.",
                    field="Content-Length",
                )
            handle.write(piece)
        handle.truncate(upload.offset + written)
    return written


@dataclass(frozen=True)
class ReceivedFile:
    """A finished upload's file and where in the uploaded folder it belongs."""

    name: str
    path: Path


@contextlib.contextmanager
def consume(user, study: Study, upload_ids: list) -> Iterator[list[ReceivedFile]]:
    """The finished uploads' files, for registering one scan; they are removed afterwards,
    whether the scan was added or refused. An unknown, unfinished or other study's upload is
    refused (400, naming it) before anything is consumed."""
    with transaction.atomic():
        found = {
            upload.pk: upload
            for upload in ScanUpload.objects.select_for_update().filter(
                pk__in=upload_ids, user=user, expires_at__gt=timezone.now()
            )
        }
        uploads = []
        for upload_id in upload_ids:
            upload = found.get(upload_id)
            if upload is None:
                raise DomainError(str(_not_found(upload_id)), field="uploads")
            if upload.study_id != study.pk:
                raise DomainError(
                    f"Upload {upload_id} ({upload.filename}) was made for another study.",
                    field="uploads",
                )
            if not upload.finished:
                raise DomainError(
                    f"Upload {upload_id} ({upload.filename}) is unfinished: {upload.offset:,} "
                    f"of {upload.length:,} bytes arrived; send the rest first.",
                    field="uploads",
                )
            uploads.append(upload)
        ScanUpload.objects.filter(pk__in=[upload.pk for upload in uploads]).delete()
    try:
        yield [
            ReceivedFile(upload.relative_path or upload.filename, data_path(upload))
            for upload in uploads
        ]
    finally:
        for upload in uploads:
            data_path(upload).unlink(missing_ok=True)
