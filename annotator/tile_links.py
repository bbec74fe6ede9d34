"""Signed tile links: the viewer's permission is checked once per scan, not once per tile.

Opening a scan (its Deep Zoom descriptor) checks the session and the study membership as every
other request does, and hands out the scan's tiles under a link that carries its own proof:

    /tiles/USER/EPOCH/EXPIRES/SIGNATURE/SCAN/LEVEL/COL_ROW.jpeg

A tile request is checked from the link alone, with no session and no database, by the app or
by nginx in front of it (deploy/nginx-tiles.conf), and both must agree on every bit of it:
- SIGNATURE: MD5 over "EXPIRES/USER/EPOCH/SCAN SECRET", base64url without padding. MD5 because
  nginx's `secure_link_md5` checks nothing else; the secret inside the hashed string makes it a
  keyed digest, links live an hour at most and name nothing a member could not see anyway.
- EXPIRES: Unix seconds, rounded up to a quarter of the lifetime so that a viewer opened twice
  in a few minutes asks for the same URLs (and the browser's copies of tiles are used).
- EPOCH: the user's access epoch, a file TILE_DIR/access/USER/EPOCH. Anything that can take a
  scan out of the user's sight (a blinded round, a membership gone, a scan moved into a study
  they rate blinded, the account switched off) deletes the user's epoch files: every link they
  hold stops working at once, on every web process and in nginx, without a database lookup.
- SCAN: "ID-SHA16-SCHEME", the scan, the start of its file's checksum and the tile scheme, so a
  link never serves tiles of another file or of another tile geometry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from django.conf import settings

from . import tiles
from .models import Scan

URL_PREFIX = "/tiles/"
EPOCH_PATTERN = r"[0-9a-f]{16}"
SIGNATURE_PATTERN = r"[A-Za-z0-9_-]{22}"
SCAN_KEY_PATTERN = r"[0-9]+-[0-9a-f]{16}-[a-z0-9]+"
_EPOCH = re.compile(EPOCH_PATTERN)
_SCAN_KEY = re.compile(r"([0-9]+)-([0-9a-f]{16})-([a-z0-9]+)")

# The same sentences nginx answers (deploy/nginx-tiles.conf).
INVALID = "This tile link is not valid: open the scan again."
EXPIRED = "This tile link has expired: open the scan again."
WITHDRAWN = "This tile link was withdrawn: open the scan again."
STALE = "This tile link names a scan file that is not there any more: open the scan again."


class TileLinkRefused(Exception):
    """The link is forged, expired or withdrawn; the message says which, in the user's words."""


@dataclass(frozen=True)
class TileLink:
    """Where the scan's tiles are (the viewer adds LEVEL/COL_ROW.jpeg) and until when."""

    tiles_url: str
    expires: int

    def seconds_left(self, now: float | None = None) -> int:
        return max(0, self.expires - int(now if now is not None else time.time()))


def scan_key(scan: Scan) -> str:
    return f"{scan.pk}-{scan.sha256[:16]}-{tiles.tile_scheme(scan)}"


def _signature(expires: int, user_id: int, epoch: str, key: str) -> str:
    message = f"{expires}/{user_id}/{epoch}/{key} {settings.TILE_TOKEN_SECRET}"
    digest = hashlib.md5(message.encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _access_folder(user_id: int) -> str:
    # A string, not a Path: built for every tile request (`verify`).
    return os.path.join(settings.TILE_DIR, "access", str(int(user_id)))


def current_epoch(user_id: int) -> str:
    """The user's access epoch, made when they have none (first link, or after a withdrawal)."""
    folder = _access_folder(user_id)
    try:
        existing = sorted(name for name in os.listdir(folder) if _EPOCH.fullmatch(name))
    except FileNotFoundError:
        existing = []
    if existing:
        return existing[0]
    os.makedirs(folder, exist_ok=True)
    epoch = secrets.token_hex(8)
    Path(folder, epoch).touch()
    return epoch


def withdraw(user_ids: Iterable[int]) -> None:
    """Every tile link these users hold stops working now; the next scan they open gets new ones."""
    for user_id in set(user_ids):
        folder = _access_folder(user_id)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            Path(folder, name).unlink(missing_ok=True)


def issue(user, scan: Scan, now: float | None = None) -> TileLink:
    """A link to the scan's tiles for a user the caller has found allowed to see the scan."""
    lifetime = settings.TILE_LINK_SECONDS
    step = max(1, lifetime // 4)
    now = time.time() if now is None else now
    expires = math.ceil((now + lifetime) / step) * step
    epoch = current_epoch(user.pk)
    key = scan_key(scan)
    signature = _signature(expires, user.pk, epoch, key)
    return TileLink(f"{URL_PREFIX}{user.pk}/{epoch}/{expires}/{signature}/{key}/", expires)


def verify(
    user_id: int, epoch: str, expires: int, signature: str, key: str, now: float | None = None
) -> None:
    """Raise TileLinkRefused unless the link was issued by this site, is current and stands."""
    expected = _signature(expires, user_id, epoch, key)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise TileLinkRefused(INVALID)
    if expires < (time.time() if now is None else now):
        raise TileLinkRefused(EXPIRED)
    if not _EPOCH.fullmatch(epoch) or not os.path.isfile(
        os.path.join(_access_folder(user_id), epoch)
    ):
        raise TileLinkRefused(WITHDRAWN)


# Scans by id for links already verified: a scan's file never changes under its id, so each
# web process looks it up once. Written by hand rather than with functools.lru_cache so that a
# scan not found is not remembered (it may be registered a moment later in a test or a demo).
_scans: dict[int, Scan] = {}


def scan_for_link(key: str) -> Scan:
    """The scan a verified link names; TileLinkRefused(STALE) when its file or scheme changed."""
    match = _SCAN_KEY.fullmatch(key)
    if match is None:
        raise TileLinkRefused(INVALID)
    scan_id = int(match.group(1))
    scan = _scans.get(scan_id)
    if scan is None or scan_key(scan) != key:
        scan = Scan.objects.only("id", "sha256", "file", "original_name").filter(pk=scan_id).first()
        if scan is None or scan_key(scan) != key:
            raise TileLinkRefused(STALE)
        if len(_scans) >= settings.SLIDE_HANDLE_CACHE_SIZE * 64:
            _scans.clear()
        _scans[scan_id] = scan
    return scan


def forget_scan(scan_id: int) -> None:
    _scans.pop(scan_id, None)


def descriptor_with_link(descriptor: str, link: TileLink) -> str:
    """The Deep Zoom descriptor with the link in its `Url` attribute, which OpenSeadragon takes
    as the base of every tile URL instead of deriving one from the descriptor's own URL."""
    ElementTree.register_namespace("", "http://schemas.microsoft.com/deepzoom/2008")
    root = ElementTree.fromstring(descriptor)
    root.set("Url", link.tiles_url)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)
