"""The Barcelona PBC importer on small fake class folders: folder and prefix to node, re-runs,
and every kind of misfit reported together with nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from PIL import Image

from annotator.models import Cell, Label, LabelChange, Membership, Study, Taxonomy
from datasets.importers import ImportProblem
from datasets.pbc import PbcImportProblems, import_pbc

RELEASE = {
    "neutrophil": ["SNE_12345.jpg", "BNE_200.jpg", "NEUTROPHIL_7.jpg"],
    "ig": ["MY_100.jpg", "MMY_101.jpg", "PMY_102.jpg", "IG_103.jpg"],
    "platelet": ["PLATELET_1.jpg"],
    "basophil": ["BA_100102.jpg"],
    "lymphocyte": ["LY_5.jpg"],
}
EXPECTED_NODES = {
    "neutrophil/SNE_12345.jpg": "SNE",
    "neutrophil/BNE_200.jpg": "BNE",
    "neutrophil/NEUTROPHIL_7.jpg": "NEU",
    "ig/MY_100.jpg": "MY",
    "ig/MMY_101.jpg": "MMY",
    "ig/PMY_102.jpg": "PMY",
    "ig/IG_103.jpg": "IG",
    "platelet/PLATELET_1.jpg": "PLT",
    "basophil/BA_100102.jpg": "BA",
    "lymphocyte/LY_5.jpg": "LY",
}


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (36, 36), (190, 120, 170)).save(path, "JPEG")


def _release(root: Path, folders: dict[str, list[str]]) -> Path:
    for folder, files in folders.items():
        for name in files:
            _jpg(root / folder / name)
    return root


def _stored_files() -> list[str]:
    media = Path(default_storage.location)
    return sorted(str(p.relative_to(media)) for p in media.rglob("*") if p.is_file())


def test_folders_and_prefixes_map_to_their_nodes(db, tmp_path):
    report = import_pbc(_release(tmp_path / "PBC", RELEASE), "pbc")
    study = Study.objects.get(name="pbc")
    assert study.taxonomy.name == "pbc-8"
    assert report.cells_created == report.images_copied == report.labels_created == 10
    labels = Label.objects.filter(round__study=study).select_related("cell", "node", "round")
    assert {label.cell.external_id: label.node.code for label in labels} == EXPECTED_NODES
    assert {label.round.name for label in labels} == {"gold"}
    assert {label.round.kind for label in labels} == {"gold"}
    assert not labels.filter(node__is_leaf=False).exclude(node__code__in=["NEU", "IG"]).exists()

    examiner = get_user_model().objects.get(username="pbc-pbc-examiner")
    assert not examiner.is_active and not examiner.has_usable_password()
    assert Membership.objects.filter(study=study, user=examiner, role="annotator").exists()
    assert {label.rater_id for label in labels} == {examiner.pk}
    history = LabelChange.objects.filter(round__study=study)
    assert history.count() == 10 and set(history.values_list("action", flat=True)) == {"create"}

    cell = Cell.objects.get(study=study, external_id="ig/MY_100.jpg")
    assert cell.scan is None and cell.x is None and cell.y is None
    assert cell.patch.name == "patch-cells/pbc/ig/MY_100.jpg"
    with Image.open(cell.patch.path) as stored:
        assert stored.size == (36, 36)
    assert report.per_class["ig"] == {"MY": 1, "MMY": 1, "PMY": 1, "IG": 1}


def test_re_running_changes_nothing(db, tmp_path):
    root = _release(tmp_path / "PBC", RELEASE)
    import_pbc(root, "pbc")
    before = (Cell.objects.count(), Label.objects.count(), LabelChange.objects.count())
    files = _stored_files()
    report = import_pbc(root, "pbc")
    assert not report.changed_anything
    assert report.labels_unchanged == 10
    assert (Cell.objects.count(), Label.objects.count(), LabelChange.objects.count()) == before
    assert _stored_files() == files


def test_a_taxonomy_is_loaded_only_when_missing(db, tmp_path):
    root = _release(tmp_path / "PBC", {"basophil": ["BA_1.jpg"]})
    import_pbc(root, "pbc-a")
    import_pbc(root, "pbc-b")
    assert Taxonomy.objects.filter(name="pbc-8").count() == 1
    assert Study.objects.get(name="pbc-a").taxonomy == Study.objects.get(name="pbc-b").taxonomy


def test_misfits_are_all_reported_together_and_nothing_is_written(db, tmp_path):
    root = _release(
        tmp_path / "PBC",
        {
            **RELEASE,
            "monocytes": ["MO_1.jpg", "MO_2.jpg"],
            "neutrophil": ["SNE_1.jpg", "XYZ_1.jpg", "XYZ_2.jpg"],
            "lymphocyte": ["LY_1.jpg", "MY_9.jpg"],
        },
    )
    with pytest.raises(PbcImportProblems) as caught:
        import_pbc(root, "pbc-bad")
    known = "basophil, eosinophil, erythroblast, ig, lymphocyte, monocyte, neutrophil, platelet"
    assert caught.value.problems == [
        f"unknown folder 'monocytes' (the known folders are {known}) "
        "(2 file(s), e.g. MO_1.jpg, MO_2.jpg)",
        "lymphocyte: prefix 'MY' names MY (Myelocyte), which is neither the folder's "
        "LY (Lymphocyte) nor under it (1 file(s), e.g. MY_9.jpg)",
        "neutrophil: unknown file-name prefix 'XYZ' (2 file(s), e.g. XYZ_1.jpg, XYZ_2.jpg)",
    ]
    assert str(caught.value).startswith(f"3 problem(s) in {root}:\n  - unknown folder")
    assert not Study.objects.filter(name="pbc-bad").exists()
    assert not Taxonomy.objects.filter(name="pbc-8").exists()
    assert not get_user_model().objects.filter(username="pbc-bad-pbc-examiner").exists()
    assert not Cell.objects.exists() and not Label.objects.exists()
    assert _stored_files() == []


def test_files_that_are_not_jpg_images_are_reported(db, tmp_path):
    root = _release(tmp_path / "PBC", {"basophil": ["BA_1.jpg"], "eosinophil": ["EO_1.jpg"]})
    (root / "basophil" / "notes.txt").write_text("not an image")
    (root / "eosinophil" / "EO_2.jpg").write_text("text pretending to be a JPG")
    (root / "README.md").write_text("release notes")
    with pytest.raises(PbcImportProblems) as caught:
        import_pbc(root, "pbc-bad")
    assert sorted(caught.value.problems) == [
        "basophil: not a .jpg file (1 file(s), e.g. notes.txt)",
        "eosinophil: named .jpg but not a JPEG image (1 file(s), e.g. EO_2.jpg)",
        "not inside a class folder (1 file(s), e.g. README.md)",
    ]
    assert not Cell.objects.exists()


def test_a_study_on_another_taxonomy_is_refused(study, tmp_path):
    root = _release(tmp_path / "PBC", {"basophil": ["BA_1.jpg"]})
    with pytest.raises(ImportProblem, match="uses taxonomy aml-18 v1, not the peripheral blood"):
        import_pbc(root, study.name)
    assert not study.cells.exists()


def test_the_command_prints_counts_per_class_then_nothing_changed(db, tmp_path, capsys):
    root = _release(tmp_path / "PBC", RELEASE)
    call_command("import_pbc", str(root), "--study", "pbc")
    out = capsys.readouterr().out
    assert "study pbc: 10 images in 5 classes, 10 cells created, 10 images copied" in out
    assert re.search(r"^ +ig +4  \(IG 1, MMY 1, MY 1, PMY 1\)$", out, re.MULTILINE)
    assert re.search(r"^ +neutrophil +3  \(BNE 1, NEU 1, SNE 1\)$", out, re.MULTILINE)
    assert "gold: 10 labels created" in out and "\nchanged in" in out
    call_command("import_pbc", str(root), "--study", "pbc")
    assert "nothing changed in" in capsys.readouterr().out


def test_the_command_lists_the_problems_and_says_nothing_was_imported(db, tmp_path):
    root = _release(tmp_path / "PBC", {"monocytes": ["MO_1.jpg"], "basophil": ["XX_1.jpg"]})
    with pytest.raises(CommandError) as caught:
        call_command("import_pbc", str(root), "--study", "pbc")
    message = str(caught.value)
    assert "2 problem(s)" in message and "unknown folder 'monocytes'" in message
    assert "basophil: unknown file-name prefix 'XX'" in message
    assert message.endswith("(nothing was imported)")
    assert not Study.objects.filter(name="pbc").exists()


def test_links_out_of_the_folder_and_unreadable_jpegs_are_reported(db, tmp_path):
    root = _release(tmp_path / "PBC", {"basophil": ["BA_1.jpg"], "eosinophil": ["EO_1.jpg"]})
    _jpg(tmp_path / "private" / "BA_9.jpg")
    (root / "basophil" / "BA_2.jpg").symlink_to(tmp_path / "private" / "BA_9.jpg")
    (root / "eosinophil" / "EO_2.jpg").write_bytes(b"\xff\xd8\xff" + b"not really a JPEG" * 10)
    with pytest.raises(PbcImportProblems) as caught:
        import_pbc(root, "pbc-bad")
    problems = sorted(caught.value.problems)
    assert problems[0] == "basophil: a link that leads out of the folder (1 file(s), e.g. BA_2.jpg)"
    assert problems[1].startswith("eosinophil: not a readable image (")
    assert problems[1].endswith("(1 file(s), e.g. EO_2.jpg)")
    assert not Cell.objects.exists() and _stored_files() == []
