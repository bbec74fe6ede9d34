"""Measuring the detector with the study's own data (annotator.detection_check): recall against
the examiners' clicks, one to one within 5 µm, and precision from their review per confidence
band, through the check_detection command."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from statsmodels.stats.proportion import proportion_confint

from annotator import annotation, screening
from annotator.detection_check import matched_pairs, scan_check

from .test_proposal_review import add_proposals


def test_pairs_are_matched_one_to_one_nearest_first():
    truth = [(0, 0), (10, 0)]
    # Both found points are near the first truth point; the farther one is also near the second.
    assert matched_pairs([(1, 0), (4, 0)], truth, radius=6) == 2
    assert matched_pairs([(1, 0), (2, 0)], truth, radius=6) == 1  # two proposals, one cell
    assert matched_pairs([(1, 0)], truth, radius=0.5) == 0
    assert matched_pairs([], truth, radius=6) == 0


@pytest.mark.django_db
def test_recall_counts_the_clicks_found_and_precision_the_proposals_accepted(
    study, scan, coordinator, annotator
):
    step = 5.0 / scan.mpp_x  # the match radius in pixels
    gold = annotation.gold_round_for(study, annotator)
    clicks = [(400, 400), (1200, 400), (2000, 400), (400, 1600)]
    for x, y in clicks:
        annotation.set_label(
            annotation.create_cell(study, scan, x, y, annotator), gold, annotator, node="NGS"
        )
    near, far = int(step * 0.6), int(step * 1.5)
    spots = [(400 + near, 400), (1200, 400 + far), (2000, 400), (2500, 2000), (2600, 2100)]
    proposals = add_proposals(scan, coordinator, spots)
    for proposal, confidence in zip(proposals, [0.9, 0.9, 0.6, 0.6, 0.4], strict=True):
        proposal.confidence = confidence
        proposal.save()
    screening.accept_proposal(proposals[3], annotator, node="LYT", study=study)
    screening.reject_proposal(proposals[4], annotator)

    check = scan_check(study, scan)
    assert check["proposed"] == 5 and check["clicked"] == 4  # the accepted proposal is no click
    assert check["recall"]["matched"] == 2 and check["recall"]["share"] == 0.5
    assert check["recall"]["ci"] == pytest.approx(list(proportion_confint(2, 4, method="wilson")))
    assert check["precision"]["decided"] == 2 and check["precision"]["share"] == 0.5
    bands = {tuple(band["confidence"]): band for band in check["precision_by_confidence"]}
    assert bands[(0.0, 0.5)]["decided"] == 1 and bands[(0.0, 0.5)]["share"] == 0.0
    assert bands[(0.5, 0.7)]["share"] == 1.0 and bands[(0.7, 1.0)]["decided"] == 0

    out = io.StringIO()
    call_command("check_detection", "--study", study.name, stdout=out)
    assert "recall 2 of 4 clicks = 0.500" in out.getvalue()
    out = io.StringIO()
    call_command("check_detection", "--study", study.name, "--format", "json", stdout=out)
    assert json.loads(out.getvalue())["precision"]["count"] == 1
    with pytest.raises(CommandError, match="No study named"):
        call_command("check_detection", "--study", "nowhere")
