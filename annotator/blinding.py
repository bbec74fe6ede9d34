"""The blinded rater's side: a queue of patches behind opaque tokens, and nothing else.

Everything here is keyed by the rater's own rounds and by item tokens. What goes out names no
cell, scan, position, patient or label other than the rater's own answer in the same round;
patch images are decoded and re-encoded, so no file name, text chunk or EXIF travels with them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from django.core.files.storage import default_storage
from django.utils import timezone
from django.utils.crypto import salted_hmac
from PIL import Image

from core.errors import NotFoundError

from . import annotation, patches
from .access import BLINDED_KINDS
from .models import Round, RoundItem
from .rounds import RoundClosed, progress, require_open


@dataclass(frozen=True)
class Answer:
    node: str | None
    cannot_classify: bool


@dataclass(frozen=True)
class QueueItem:
    """One place in the queue as the rater sees it."""

    token: str
    position: int
    total: int
    done: int
    answer: Answer | None
    next_unanswered: int | None


def rater_rounds(user):
    """The user's blinded rounds and repeats, oldest first."""
    return Round.objects.filter(rater=user, kind__in=BLINDED_KINDS).order_by("id")


def rater_round(user, round_id: int) -> Round:
    """One of the user's blinded rounds, or a 404 that says nothing of other users' rounds."""
    round_ = rater_rounds(user).filter(pk=round_id).first()
    if round_ is None:
        raise NotFoundError(f"No blinded round {round_id} among your rounds.")
    return round_


def _answers(round_: Round) -> dict[int, Answer]:
    return {
        cell: Answer(code, cannot)
        for cell, code, cannot in round_.labels.values_list(
            "cell_id", "node__code", "cannot_classify"
        )
    }


def _next_unanswered(items: list[tuple[int, int]], answered, after: int) -> int | None:
    """The first unanswered position after `after`, wrapping round to the start."""
    later = [pos for pos, cell in items if pos > after and cell not in answered]
    earlier = [pos for pos, cell in items if pos <= after and cell not in answered]
    found = later or earlier
    return found[0] if found else None


def first_unanswered(round_: Round) -> int | None:
    items = list(round_.items.values_list("position", "cell_id"))
    return _next_unanswered(items, _answers(round_), 0)


def queue_item(round_: Round, position: int) -> QueueItem:
    """The item at `position` (1-based) of an open round, with the rater's answer so far."""
    require_open(round_)
    return _queue_state(round_, position)


def _queue_state(round_: Round, position: int) -> QueueItem:
    """The item at `position` as the rater sees it (the round is known to be open)."""
    items = list(round_.items.values_list("position", "cell_id", "token").order_by("position"))
    if not 1 <= position <= len(items):
        raise NotFoundError(f"Position {position} is outside the queue (1 to {len(items)}).")
    _, cell, token = items[position - 1]
    answered = _answers(round_)
    pairs = [(pos, c) for pos, c, _ in items]
    return QueueItem(
        token=token,
        position=position,
        total=len(items),
        done=len(answered),
        answer=answered.get(cell),
        next_unanswered=_next_unanswered(pairs, answered, position),
    )


def _item(user, token: str) -> RoundItem:
    item = (
        RoundItem.objects.select_related("round__study", "cell__scan", "cell__study")
        .filter(token=token, round__rater=user, round__kind__in=BLINDED_KINDS)
        .first()
    )
    if item is None:
        raise NotFoundError("No such item in your blinded rounds.")
    require_open(item.round)
    return item


def answer_item(
    user, token: str, *, node: str | None, cannot_classify: bool, seconds_spent: float
) -> QueueItem:
    """Record (or change) the rater's answer for an item; the queue state after it."""
    item = _item(user, token)
    annotation.set_label(
        item.cell,
        item.round,
        user,
        node=node,
        cannot_classify=cannot_classify,
        seconds_spent=seconds_spent,
    )
    return _queue_state(item.round, item.position)  # `_item` checked that it is open


# The eight ways to lay a square patch down (rotations by 90 degrees, with and without a
# mirror). A cell's class does not depend on its orientation; index 0 is the stored patch.
ORIENTATIONS = 8


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    turned = np.rot90(pixels, k=orientation % 4)
    return turned[:, ::-1] if orientation >= 4 else turned


def _token_seed(token: str) -> int:
    """A secret number per item token (keyed by SECRET_KEY): the same item always looks the
    same, and nothing the rater holds predicts another round's version of the cell."""
    digest = salted_hmac("cytomark.blinded-patch", token).digest()
    return int.from_bytes(digest[:8], "big")


def _orientation(item: RoundItem) -> int:
    """A non-identity orientation, different for each blinded round over the same cell (up
    to seven rounds): the cell's rounds, ranked by id, step on from a secret start."""
    rounds = list(
        RoundItem.objects.filter(cell_id=item.cell_id)
        .order_by("round_id")
        .values_list("round_id", "token")
    )
    start = _token_seed(rounds[0][1]) % (ORIENTATIONS - 1)
    rank = [round_id for round_id, _ in rounds].index(item.round_id)
    return 1 + (start + rank) % (ORIENTATIONS - 1)


def blinded_pixels(item: RoundItem, pixels: np.ndarray) -> np.ndarray:
    """What the rater of `item` sees of a patch: turned and/or mirrored, and with every pixel
    nudged by -1, 0 or +1 grey level (far below what an eye or the morphology notices).

    So no two rounds serve the same bytes or the same pixels for a cell, and neither equals the
    ordinary patch: a rater who kept the images of an earlier round cannot match a repeat's
    items to them by hash, even after undoing the turn. Comparing them by eye stays possible
    (docs/agreement.md).
    """
    noise = np.random.default_rng(_token_seed(item.token)).integers(-1, 2, size=pixels.shape)
    nudged = np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(_orient(nudged, _orientation(item)))


def patch_png(user, token: str) -> bytes:
    """The item's patch as a PNG made afresh from its pixels, in this item's own orientation
    and noise (`blinded_pixels`): no metadata of any source file, no bytes shared with the
    ordinary patch or another round's."""
    item = _item(user, token)
    name = patches.ensure_patch(item.cell).name
    with default_storage.open(name, "rb") as handle, Image.open(handle) as source:
        pixels = np.asarray(source.convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(blinded_pixels(item, pixels)).save(buffer, "PNG", compress_level=3)
    return buffer.getvalue()


def queue_summary(user) -> list[dict]:
    """The rater's rounds with progress and whether each can be opened now."""
    rows = []
    for state in progress(rater_rounds(user)):
        round_ = state.round
        try:
            require_open(round_)
            status, why = "open", ""
        except RoundClosed as exc:
            waiting = round_.not_before and round_.not_before > timezone.now()
            status, why = ("waiting" if waiting else "closed"), str(exc)
        rows.append(
            {
                "id": round_.pk,
                "name": round_.name,
                "kind": round_.kind,
                "done": state.done,
                "total": state.total,
                "status": status,
                "not_before": round_.not_before,
                "why": why,
            }
        )
    return rows
