"""File names made from what a client sent, bounded so that every file system and column takes
them."""

from __future__ import annotations

from pathlib import PurePath

# Most file systems take 255 bytes per name; room is left for the suffix a storage adds to
# tell two files of one name apart.
MAX_NAME_BYTES = 200


def fit_file_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """`name` shortened at a character boundary to at most `max_bytes` of UTF-8, keeping its
    extension (when the extension itself is short)."""
    if len(name.encode()) <= max_bytes:
        return name
    suffix = PurePath(name).suffix
    if len(suffix.encode()) > max_bytes // 4:
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    room = max_bytes - len(suffix.encode())
    stem = stem.encode()[:room].decode(errors="ignore")
    return stem + suffix
