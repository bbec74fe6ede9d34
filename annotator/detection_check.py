"""How well the detector does on a study's own scans, measured with the tool's own data.

A classical detector tuned on synthetic smears needs checking on real ones before its proposals
are trusted. Two figures need nothing but what examiners do anyway:

- **Recall against the examiners' clicks**: of the cells an examiner placed by hand on a scan
  (a gold round's cells that are no accepted proposal), the share with a proposal of the
  current detector within 5 µm, matched one to one, nearest pairs first. Examiners click a
  sample of a smear's leukocytes, so this is recall only, never precision.
- **Precision from review**: of the proposals examiners decided, the share accepted (labelled,
  "cannot classify" included, or accepted in view) rather than rejected, per confidence band,
  which shows the confidence worth trusting.

Shares carry Wilson 95 % intervals (`annotator.differential.share_interval`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from .detection import DETECTOR_VERSION
from .differential import share_row
from .models import Cell, Label, ProposedCell, Round, Scan, Study

MATCH_UM = 5.0
CONFIDENCE_BANDS = ((0.0, 0.5), (0.5, 0.7), (0.7, 1.0001))


def matched_pairs(
    found: Sequence[tuple[int, int]], truth: Sequence[tuple[int, int]], radius: float
) -> int:
    """How many pairs of (found, truth) points lie within `radius`, one to one, the closest
    pairs taken first (greedy: the pairs are far apart next to the radius in a smear, so it
    agrees with an optimal assignment there and is simple to state)."""
    if not len(found) or not len(truth):
        return 0
    a, b = np.asarray(found, float), np.asarray(truth, float)
    distance = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    close = np.argwhere(distance <= radius)
    order = np.argsort(distance[close[:, 0], close[:, 1]], kind="stable")
    used_found, used_truth = set(), set()
    for i, j in close[order]:
        if i not in used_found and j not in used_truth:
            used_found.add(i)
            used_truth.add(j)
    return len(used_found)


def far_from(
    points: Sequence[tuple[int, int]], others: Sequence[tuple[int, int]], radius: float
) -> list[bool]:
    """For each point, whether none of `others` lies within `radius` of it."""
    if not len(points) or not len(others):
        return [True] * len(points)
    distance = cKDTree(np.asarray(others, float)).query(
        np.asarray(points, float), distance_upper_bound=radius
    )[0]
    return [bool(d == np.inf) for d in distance]


def _clicks(study: Study, scan: Scan) -> list[tuple[int, int]]:
    """The positions of the study's gold-labelled cells on the scan placed by hand."""
    from_proposals = ProposedCell.objects.filter(scan=scan, cell__isnull=False).values("cell")
    labelled = Label.objects.filter(round__study=study, round__kind=Round.Kind.GOLD)
    cells = Cell.objects.filter(study=study, scan=scan, pk__in=labelled.values("cell"))
    return list(cells.exclude(pk__in=from_proposals).values_list("x", "y"))


def scan_check(study: Study, scan: Scan, *, radius_um: float = MATCH_UM) -> dict:
    """Recall against the examiners' clicks and precision from review, for one scan."""
    proposals = ProposedCell.objects.filter(scan=scan, detector_version=DETECTOR_VERSION)
    points = list(proposals.values_list("x", "y"))
    clicks = _clicks(study, scan)
    radius = radius_um / scan.mpp_x if scan.mpp_x else None
    matched = matched_pairs(points, clicks, radius) if radius else 0
    decided = list(
        proposals.exclude(status=ProposedCell.Status.PROPOSED).values_list("confidence", "status")
    )
    bands = []
    for low, high in CONFIDENCE_BANDS:
        inside = [status for confidence, status in decided if low <= confidence < high]
        accepted = sum(status == ProposedCell.Status.ACCEPTED for status in inside)
        bands.append(
            {
                "confidence": [low, min(high, 1.0)],
                "decided": len(inside),
                **share_row(accepted, len(inside)),
            }
        )
    accepted = sum(status == ProposedCell.Status.ACCEPTED for _, status in decided)
    return {
        "scan": scan.pk,
        "name": scan.original_name,
        "detector_version": DETECTOR_VERSION,
        "proposed": len(points),
        "clicked": len(clicks),
        "recall": {"matched": matched, **share_row(matched, len(clicks))},
        "precision": {"decided": len(decided), **share_row(accepted, len(decided))},
        "precision_by_confidence": bands,
        "match_um": radius_um,
    }


def study_check(study: Study, scan_ids: list[int] | None = None) -> dict:
    """The check of each of the study's scans with proposals, and the totals over them."""
    scans = study.scans.filter(proposed_cells__detector_version=DETECTOR_VERSION).distinct()
    if scan_ids:
        scans = scans.filter(pk__in=scan_ids)
    rows = [scan_check(study, scan) for scan in scans.order_by("pk")]
    matched = sum(row["recall"]["matched"] for row in rows)
    clicked = sum(row["clicked"] for row in rows)
    decided = sum(row["precision"]["decided"] for row in rows)
    accepted = sum(row["precision"]["count"] for row in rows)
    return {
        "study": study.name,
        "scans": rows,
        "recall": {"matched": matched, **share_row(matched, clicked)},
        "precision": {"decided": decided, **share_row(accepted, decided)},
    }
