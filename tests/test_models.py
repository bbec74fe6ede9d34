"""Invariants the database enforces by itself, whatever code writes to it."""

import pytest
from django.db import IntegrityError, transaction

from annotator.models import Cell, Label, Round, TaxonNode


def violates(make) -> bool:
    try:
        with transaction.atomic():
            make()
    except IntegrityError:
        return True
    return False


@pytest.fixture
def gold(study, annotator):
    return Round.objects.create(study=study, rater=annotator, kind=Round.Kind.GOLD)


def test_one_label_per_cell_and_round(study, scan, annotator, gold, aml_taxonomy):
    cell = Cell.objects.create(study=study, scan=scan, x=1, y=1)
    ngs = aml_taxonomy.nodes.get(code="NGS")
    Label.objects.create(cell=cell, round=gold, node=ngs, rater=annotator)
    assert violates(lambda: Label.objects.create(cell=cell, round=gold, node=ngs, rater=annotator))


def test_a_label_is_a_node_or_cannot_classify_never_both_or_neither(
    study, scan, annotator, gold, aml_taxonomy
):
    cell = Cell.objects.create(study=study, scan=scan, x=1, y=1)
    ngs = aml_taxonomy.nodes.get(code="NGS")
    assert violates(
        lambda: Label.objects.create(
            cell=cell, round=gold, node=ngs, cannot_classify=True, rater=annotator
        )
    )
    assert violates(lambda: Label.objects.create(cell=cell, round=gold, rater=annotator))
    assert not violates(
        lambda: Label.objects.create(cell=cell, round=gold, cannot_classify=True, rater=annotator)
    )


def test_a_cell_is_on_a_scan_with_a_position_or_a_patch_without_one(study, scan):
    assert violates(lambda: Cell.objects.create(study=study, scan=scan, x=1))
    assert violates(lambda: Cell.objects.create(study=study, x=1, y=1, patch="p.png"))
    assert violates(lambda: Cell.objects.create(study=study))
    assert not violates(
        lambda: Cell.objects.create(study=study, patch="patch-cells/a.png", external_id="a")
    )


def test_one_gold_round_per_rater_and_repeats_name_their_original(study, annotator, gold):
    assert violates(lambda: Round.objects.create(study=study, rater=annotator, kind="gold"))
    assert violates(lambda: Round.objects.create(study=study, rater=annotator, kind="repeat"))
    blinded = Round.objects.create(study=study, rater=annotator, kind="blinded")
    assert violates(
        lambda: Round.objects.create(study=study, rater=annotator, kind="blinded", repeats=blinded)
    )
    assert not violates(
        lambda: Round.objects.create(study=study, rater=annotator, kind="repeat", repeats=blinded)
    )


def test_taxonomy_codes_hotkeys_and_root_are_unique(aml_taxonomy):
    root = aml_taxonomy.nodes.get(parent__isnull=True)
    assert violates(
        lambda: TaxonNode.objects.create(
            taxonomy=aml_taxonomy, code="NGS", name="again", parent=root
        )
    )
    assert violates(
        lambda: TaxonNode.objects.create(
            taxonomy=aml_taxonomy, code="NEW1", name="n", parent=root, hotkey="N"
        )
    )
    assert violates(
        lambda: TaxonNode.objects.create(taxonomy=aml_taxonomy, code="NEW2", name="second root")
    )
    assert violates(
        lambda: TaxonNode.objects.create(
            taxonomy=aml_taxonomy, code="NEW3", name="n", parent=root, colour="red"
        )
    )
