"""Labels written in bulk (an imported data set) keep the same history as labels set one at a
time: one row per creation or change, by the round's rater, and nothing for an unchanged one."""

import pytest

from annotator import annotation
from annotator.models import Cell, Label, LabelChange

HISTORY = (
    "label_id",
    "cell_id",
    "cell_ref",
    "round_id",
    "action",
    "old_node__code",
    "old_cannot_classify",
    "new_node__code",
    "new_cannot_classify",
    "changed_by_id",
)


@pytest.fixture
def gold(study, annotator):
    return annotation.gold_round_for(study, annotator)


@pytest.fixture
def cells(study):
    return [Cell.objects.create(study=study, external_id=f"p/{n}.tiff") for n in range(3)]


def _nodes(study, *codes):
    return [study.taxonomy.nodes.get(code=code) for code in codes]


def _history(cell) -> list[tuple]:
    return list(LabelChange.objects.filter(cell_ref=cell.pk).order_by("id").values_list(*HISTORY))


def test_bulk_import_writes_one_history_row_per_created_or_changed_label(
    study, annotator, gold, cells
):
    lyt, mon = _nodes(study, "LYT", "MON")
    first, second, third = cells
    single, _ = annotation.set_label(first, gold, annotator, node=lyt)
    result = annotation.bulk_import_labels(gold, {first.pk: mon, second.pk: lyt, third.pk: None})
    assert result == annotation.ImportedLabels(created=2, changed=1, unchanged=0)
    labels = {label.cell_id: label for label in Label.objects.filter(round=gold)}
    assert labels[first.pk].node == mon and labels[first.pk].version == 2
    assert labels[third.pk].cannot_classify and labels[third.pk].rater == annotator
    me = annotator.pk
    assert _history(first) == [
        (single.pk, first.pk, first.pk, gold.pk, "create", None, False, "LYT", False, me),
        (single.pk, first.pk, first.pk, gold.pk, "update", "LYT", False, "MON", False, me),
    ]
    second_label, third_label = labels[second.pk].pk, labels[third.pk].pk
    assert _history(second) == [
        (second_label, second.pk, second.pk, gold.pk, "create", None, False, "LYT", False, me)
    ]
    assert _history(third) == [
        (third_label, third.pk, third.pk, gold.pk, "create", None, False, None, True, me)
    ]


def test_bulk_import_of_the_same_answers_changes_nothing(study, gold, cells):
    (lyt,) = _nodes(study, "LYT")
    answers = {cell.pk: lyt for cell in cells}
    annotation.bulk_import_labels(gold, answers)
    rows = LabelChange.objects.count()
    again = annotation.bulk_import_labels(gold, answers)
    assert again == annotation.ImportedLabels(created=0, changed=0, unchanged=3)
    assert LabelChange.objects.count() == rows == 3
    assert set(Label.objects.filter(round=gold).values_list("version", flat=True)) == {1}


def test_a_deleted_label_keeps_what_it_was_in_the_history(study, annotator, gold, cells):
    (lyt,) = _nodes(study, "LYT")
    label, _ = annotation.set_label(cells[0], gold, annotator, node=lyt, seconds_spent=2.5)
    annotation.delete_label(label, annotator, expected_version=None)
    created, deleted = LabelChange.objects.filter(cell_ref=cells[0].pk).order_by("id")
    assert created.seconds_spent == 2.5
    assert (deleted.action, deleted.label_id, deleted.old_node, deleted.new_node) == (
        "delete",
        None,
        lyt,
        None,
    )
    assert not deleted.old_cannot_classify and not deleted.new_cannot_classify
