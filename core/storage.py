"""Files in media storage, written whole or not at all; leftovers of dead writers removed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection
from datetime import datetime
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


def remove_untouched(
    folder: Path, before: datetime, pattern: str = "*", keep: Collection[str] = ()
) -> None:
    """Delete the entries of a local folder that match `pattern`, are not named in `keep` and
    were last changed before `before`, a folder with all it holds: what a process that died
    left behind, once it is older than any live writer's work can be."""
    cutoff = before.timestamp()
    for entry in folder.glob(pattern):
        try:
            if entry.name in keep or entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
        except FileNotFoundError:  # removed meanwhile by another sweep
            pass
