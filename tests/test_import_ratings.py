"""Importing a panel's ratings from a CSV (annotator.rating_import and manage.py import_ratings):
the Fleiss worked example through the panel table, study and taxonomy choice, login-less raters,
patch-only cells, cannot classify and not rated, malformed lines that store nothing, re-imports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from annotator.models import (
    Cell,
    Label,
    LabelChange,
    Membership,
    Panel,
    Round,
    RoundItem,
    Study,
    Taxonomy,
)
from annotator.panel_agreement import CANNOT_CLASSIFY, panel_agreement
from annotator.panels import panel_table
from annotator.rating_import import RatingImportError, import_ratings
from annotator.taxonomy import SHIPPED_DIR, load_taxonomy, read_taxonomy_file
from core.errors import DomainError

from .factories import UserFactory
from .test_panel_agreement import FLEISS_COUNTS

# Five leaves of the default taxonomy (aml-18) for the worked example's five categories.
FLEISS_CODES = ["NGS", "NGB", "LYT", "MON", "EOS"]


def _csv(rows) -> str:
    return "item,rater,label\n" + "".join(
        f"{item},{rater},{label}\n" for item, rater, label in rows
    )


def _fleiss_rows() -> list[tuple[str, str, str]]:
    """The worked example as ratings: subject i rated by r01..r14, its counts in order."""
    rows = []
    for subject, counts in enumerate(FLEISS_COUNTS, start=1):
        labels = [
            code for code, many in zip(FLEISS_CODES, counts, strict=True) for _ in range(many)
        ]
        rows.extend(
            (f"subject-{subject:02d}", f"r{rater:02d}", label)
            for rater, label in enumerate(labels, start=1)
        )
    return rows


def _write(tmp_path: Path, text: str, name: str = "ratings.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _counts() -> dict[str, int]:
    models = (Study, Taxonomy, Panel, Round, RoundItem, Cell, Label, LabelChange, Membership)
    counts = {model.__name__: model.objects.count() for model in models}
    counts["User"] = get_user_model().objects.count()
    return counts


SMALL = [
    ("p-1", "ann", "NGS"),
    ("p-1", "ben", "NGS"),
    ("p-2", "ann", "LYT"),
    ("p-2", "ben", CANNOT_CLASSIFY),
    ("p-3", "ann", "MON"),
    ("p-3", "ben", ""),
]


def test_the_fleiss_worked_example_gives_its_kappa_through_the_panel_table(db, tmp_path):
    path = _write(tmp_path, _csv(_fleiss_rows()), "fleiss.csv")
    result = import_ratings(path, "fleiss")
    assert (result.ratings, result.items, result.raters) == (140, 10, 14)
    assert result.study_created and result.panel_created and result.created == 140
    assert result.panel.name == "imported" and result.panel.reference is None
    assert result.panel.design["imported_from"] == "fleiss.csv"

    table = panel_table(result.panel)
    assert table.raters == [f"r{rater:02d}" for rater in range(1, 15)]
    external = dict(Cell.objects.filter(pk__in=table.cells).values_list("pk", "external_id"))
    given = {(item, rater): label for item, rater, label in _fleiss_rows()}
    assert {
        (external[cell], rater): label
        for cell, row in zip(table.cells, table.ratings, strict=True)
        for rater, label in zip(table.raters, row, strict=True)
    } == given
    agreement = panel_agreement(table.ratings, table.raters)
    assert round(agreement.fleiss_kappa, 3) == 0.210
    assert all(r.kind == Round.Kind.BLINDED for r in table.rounds)


def test_a_new_study_is_made_on_the_latest_version_of_the_named_taxonomy(db, tmp_path):
    spec = read_taxonomy_file(SHIPPED_DIR / "pbc-8.yaml")
    load_taxonomy(spec)
    second = load_taxonomy(dataclasses.replace(spec, title="PBC, second version")).taxonomy
    assert second.version == 2
    leaf = next(node.code for node in second.nodes.filter(is_leaf=True))
    result = import_ratings(
        _csv([("a", "ann", leaf), ("a", "ben", leaf)]), "blood", taxonomy="pbc-8"
    )
    assert result.study.taxonomy == second

    # Not loaded yet: the shipped file of that name is loaded.
    result = import_ratings(_csv([("a", "ann", "MYB")]), "marrow", taxonomy="bone-marrow")
    assert result.study.taxonomy.name == "bone-marrow"
    # No taxonomy named: the default.
    assert import_ratings(_csv(SMALL), "plain").study.taxonomy.name == "aml-18"


def test_raters_are_users_who_cannot_log_in(db):
    result = import_ratings(_csv(SMALL), "small")
    assert result.raters_created == 2
    for name in ("ann", "ben"):
        user = get_user_model().objects.get(username=name)
        assert not user.is_active and not user.has_usable_password()
        assert not Client().login(username=name, password="")
        assert Membership.objects.filter(study=result.study, user=user, role="annotator").exists()
    # The same login-less rater in a second study is the same user.
    again = import_ratings(_csv(SMALL), "small-two")
    assert again.raters_created == 0


def test_a_rater_named_like_a_user_who_can_log_in_is_refused(db):
    UserFactory(username="ben")
    before = _counts()
    with pytest.raises(RatingImportError, match="line 3: ben is the name of a user who can log in"):
        import_ratings(_csv(SMALL), "small")
    assert _counts() == before


def test_items_become_patch_only_cells(db, study):
    existing = Cell.objects.create(study=study, external_id="p-1")
    result = import_ratings(_csv(SMALL), study.name)
    assert result.cells_created == 2 and not result.study_created
    cells = Cell.objects.filter(study=study).order_by("external_id")
    assert [cell.external_id for cell in cells] == ["p-1", "p-2", "p-3"]
    assert cells[0] == existing
    assert all(
        cell.scan is None and cell.x is None and cell.y is None and not cell.patch for cell in cells
    )


def test_cannot_classify_is_declined_and_an_empty_label_is_queued_unanswered(db):
    result = import_ratings(_csv([*SMALL, ("p-4", "ann", "NGB"), ("p-4", "ben", "LYT")]), "small")
    assert (result.created, result.unrated) == (7, 1)
    ben = Round.objects.get(panel=result.panel, rater__username="ben")
    assert ben.items.count() == 4
    assert ben.labels.count() == 3
    declined = ben.labels.get(cell__external_id="p-2")
    assert declined.cannot_classify and declined.node is None
    assert not ben.labels.filter(cell__external_id="p-3").exists()

    table = panel_table(result.panel)
    rows = dict(zip(table.cells, table.ratings, strict=True))
    by_item = {Cell.objects.get(pk=cell).external_id: row for cell, row in rows.items()}
    assert by_item == {
        "p-1": ["NGS", "NGS"],
        "p-2": ["LYT", CANNOT_CLASSIFY],
        "p-3": ["MON", None],
        "p-4": ["NGB", "LYT"],
    }
    agreement = panel_agreement(table.ratings, table.raters)
    assert agreement.declined == 1 and agreement.ratings == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("item,rater,code\np-1,ann,NGS\n", "line 1: the header must be item,rater,label"),
        ("p-1,ann,NGS\n", "line 1: the header must be item,rater,label"),
        (_csv(SMALL) + "p-4,ann,XYZ\n", "line 8: unknown label 'XYZ'"),
        (
            _csv(SMALL) + "p-4,ann,MYO\n",
            "line 8: MYO is not a leaf of the taxonomy; give one of its leaves (MYON, MYOA)",
        ),
        (_csv(SMALL) + ",ann,NGS\n", "line 8: the item is empty"),
        (_csv(SMALL) + "p-4,,NGS\n", "line 8: the rater is empty"),
        (_csv(SMALL) + "p-2,ben,LYT\n", "line 8: ben rated 'p-2' already on line 5"),
        (_csv(SMALL) + f"p-4,{'r' * 151},NGS\n", "line 8: Rater name"),
        (_csv(SMALL) + "p-4,ann smith,NGS\n", "line 8: Rater name"),
        (_csv(SMALL) + "p-4,ann\n", "line 8: expected 3 fields"),
        (_csv(SMALL) + 'p-4,ann,"NGS\n', "not valid CSV"),
        (_csv(SMALL) + "p-4,ann,N\x00GS\n", "line 8: a NUL character"),
        ("item,rater,label\n", "holds no ratings"),
    ],
)
def test_a_malformed_line_stops_the_import_with_its_number_and_stores_nothing(
    db, tmp_path, text, message
):
    import_ratings(_csv(SMALL), "small")  # a panel already there stays as it was
    for study in ("small", "fresh"):
        before = _counts()
        with pytest.raises(RatingImportError) as caught:
            import_ratings(_write(tmp_path, text), study)
        assert message in str(caught.value)
        assert str(caught.value).startswith("ratings.csv")
        assert _counts() == before


def test_bad_utf8_names_its_line(db, tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_bytes(_csv(SMALL).encode() + "p-4,ann,NGS\np-5,j\u00f6rg,NGS\n".encode("latin-1"))
    before = _counts()
    with pytest.raises(RatingImportError, match=r"ratings.csv, line 9: not UTF-8"):
        import_ratings(path, "small")
    assert _counts() == before


def test_re_importing_the_same_file_changes_nothing(db, tmp_path):
    path = _write(tmp_path, _csv(_fleiss_rows()))
    call_command("import_ratings", str(path), "--study", "fleiss")
    before = _counts()
    result = import_ratings(path, "fleiss")
    assert not result.changed_anything
    assert (result.created, result.changed, result.unchanged, result.queued) == (0, 0, 140, 0)
    assert _counts() == before


def test_a_changed_file_changes_labels_with_history_adds_ratings_and_keeps_the_rest(db):
    first = import_ratings(_csv(SMALL), "small")
    changed = [
        ("p-1", "ann", "NGB"),  # changed
        ("p-1", "ben", "NGS"),
        ("p-2", "ann", "LYT"),
        ("p-3", "ann", "MON"),
        ("p-3", "ben", "MON"),  # answered now
        ("p-4", "cy", "EOS"),  # a new item and a new rater
    ]  # ben's p-2 (cannot classify) is no longer in the file
    result = import_ratings(_csv(changed), "small")
    assert result.panel == first.panel and not result.panel_created
    assert (result.created, result.changed, result.unchanged) == (2, 1, 3)
    assert (result.cells_created, result.raters_created, result.rounds_created) == (1, 1, 1)
    assert result.not_in_file == 1
    ann = Label.objects.get(
        round__panel=result.panel, rater__username="ann", cell__external_id="p-1"
    )
    assert ann.node.code == "NGB" and ann.version == 2
    change = LabelChange.objects.get(label=ann, action="update")
    assert (change.old_node.code, change.new_node.code) == ("NGS", "NGB")
    kept = Label.objects.get(
        round__panel=result.panel, rater__username="ben", cell__external_id="p-2"
    )
    assert kept.cannot_classify
    assert panel_table(result.panel).raters == ["ann", "ben", "cy"]
    assert result.panel.design["raters"] == ["ann", "ben", "cy"]


def test_unknown_taxonomy_and_a_study_on_another_taxonomy_are_clear_errors(db, study):
    before = _counts()
    with pytest.raises(DomainError, match=r"Unknown taxonomy 'nope'.*known: aml-18, bone-marrow"):
        import_ratings(_csv(SMALL), "new-study", taxonomy="nope")
    with pytest.raises(DomainError, match="Study munich uses taxonomy aml-18 v1, not pbc-8"):
        import_ratings(_csv(SMALL), study.name, taxonomy="pbc-8")
    with pytest.raises(CommandError, match=r"Unknown taxonomy 'nope'.*\(nothing was imported\)"):
        call_command("import_ratings", "-", "--study", "x", "--taxonomy", "nope")
    assert _counts() == before


def test_a_panel_made_in_cytomark_is_not_imported_into(db, study):
    Panel.objects.create(study=study, name="imported")
    with pytest.raises(DomainError, match="made in Cytomark, not imported"):
        import_ratings(_csv(SMALL), study.name)


def test_the_command_reports_what_it_did(db, tmp_path, capsys):
    path = _write(tmp_path, _csv(SMALL))
    call_command("import_ratings", str(path), "--study", "small", "--panel", "ext")
    out = capsys.readouterr().out
    assert "panel ext: 6 ratings of 3 items by 2 raters" in out
    assert "labels: 5 created, 0 changed, 0 unchanged; 1 not rated" in out
    call_command("import_ratings", str(path), "--study", "small", "--panel", "ext")
    assert "nothing changed" in capsys.readouterr().out
    with pytest.raises(CommandError, match=r"Cannot read .*missing\.csv"):
        call_command("import_ratings", str(tmp_path / "missing.csv"), "--study", "small")
    assert Study.objects.filter(name="small").count() == 1


def test_a_spreadsheet_export_with_bom_crlf_and_quoted_items_is_read_as_written(db, tmp_path):
    rows = [("p-1", "ann", "NGS"), ('"IMG 7, left.tiff"', "ann", "LYT"), ("p-1", "ben", "NGS")]
    text = _csv(rows).replace("\n", "\r\n")
    path = tmp_path / "ratings.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = import_ratings(path, "excel")
    assert result.created == 3
    assert Cell.objects.filter(study=result.study, external_id="IMG 7, left.tiff").exists()
    path.write_bytes(b"\xef\xbb\xbf" + (text + "p-2,ann,XYZ\r\n").encode())
    with pytest.raises(RatingImportError, match=r"ratings\.csv, line 5: unknown label 'XYZ'"):
        import_ratings(path, "excel")


def test_the_agreement_report_reads_the_imported_panel(db, tmp_path, capsys):
    path = _write(tmp_path, _csv(_fleiss_rows()), "fleiss.csv")
    call_command("import_ratings", str(path), "--study", "fleiss")
    capsys.readouterr()
    call_command(
        "agreement_report", "--study", "fleiss", "--panel", "imported", "--panel-bootstrap", "0"
    )
    panel = json.loads(capsys.readouterr().out)["panel"]
    assert panel["name"] == "imported" and panel["reference"] is None
    assert len(panel["raters"]) == 14 and panel["items"] == 10
    assert round(panel["fleiss_kappa"], 3) == 0.210
