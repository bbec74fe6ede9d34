"""Tiles made once, kept as files: TILE_DIR/cache/SCAN/LEVEL/COL_ROW.jpeg.

Files rather than the Django cache so that the front server can send them itself (nginx reads
the same folder, deploy/nginx-tiles.conf) and Python never copies a made tile's bytes there.
SCAN is the tile link's scan key (id, checksum start, tile scheme): another file or another
tile geometry is another folder. A file appears whole or not at all (written beside, renamed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings


def _cache_folder() -> Path:
    return Path(settings.TILE_DIR) / "cache"


def tile_path(key: str, level: int, col: int, row: int) -> Path:
    # One join and one Path: this runs for every tile a viewer asks for.
    return Path(os.path.join(settings.TILE_DIR, "cache", key, str(level), f"{col}_{row}.jpeg"))


def accel_path(key: str, level: int, col: int, row: int) -> str:
    """The internal URI under which nginx sends the tile file (X-Accel-Redirect)."""
    return f"{settings.TILE_ACCEL_REDIRECT}{key}/{level}/{col}_{row}.jpeg"


def store(key: str, level: int, col: int, row: int, data: bytes) -> Path:
    """Keep the tile; concurrent writers of the same tile each rename a whole file into place."""
    path = tile_path(key, level, col, row)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        # Readable by the front server, which runs as another user (mkstemp makes it 0600).
        os.fchmod(handle, 0o644)
        with os.fdopen(handle, "wb") as output:
            output.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def remove_scan(scan_id: int) -> None:
    """Delete every tile kept of the scan, under every checksum and scheme."""
    folder = _cache_folder()
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name.split("-", 1)[0] == str(scan_id):
            shutil.rmtree(folder / name, ignore_errors=True)
