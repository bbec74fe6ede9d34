"""Files in media storage, written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage


def store_bytes(name: str, data: bytes) -> None:
    """Put the file in storage whole or not at all.

    On local disk the bytes go to a temporary file that is renamed into place (Django's
    `FileSystemStorage.save` writes into the final name chunk by chunk, and it renames on a
    clash instead of replacing); object stores put a whole object in one request anyway.
    """
    try:
        target = Path(default_storage.path(name))
    except NotImplementedError:
        if not default_storage.exists(name):
            default_storage.save(name, ContentFile(data))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
