"""What a background job's page says when it failed: a sentence a person understands, never an
exception's raw text or a traceback (those go to the worker's log, where `describe` is called
from an `except` block that logs them)."""

from __future__ import annotations

import errno
from pathlib import Path

from .errors import DomainError


def describe(exc: BaseException, what: str, where: str = "") -> str:
    """Why `what` (e.g. "The training run") failed, `where` in it (e.g. " during fold 2")."""
    if isinstance(exc, DomainError):
        return str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return (
            f"{what} ran out of memory{where}. Start it again with smaller settings "
            "(image size, batch size) or on a machine with more memory."
        )
    if isinstance(exc, FileNotFoundError):
        name = f" ({Path(exc.filename).name})" if exc.filename else ""
        return f"{what} failed{where} because a file it reads was not found in storage{name}."
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"{what} stopped{where} because the disk is full; free some space, start it again."
    return (
        f"{what} failed{where} because of an unexpected error in the background worker; the "
        "details are in the worker's log. Start it again, and report it if it happens again."
    )
