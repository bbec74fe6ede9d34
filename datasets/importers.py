"""Importers of public data sets into studies.

`import_tcia_aml` reads the annotation file of the public Munich AML cytomorphology release
(TCIA "AML-Cytomorphology_LMU"): one line per 400 x 400 px patch,
`CLASS/CLASS_NNNN.tiff GOLD FIRST_REANNOTATION SECOND_REANNOTATION`, where `nan` means the image
is not in that round and `UNC` that the re-annotator could not assign a class. Each line becomes
a patch-only cell with up to three labels, in three named rounds:

    gold              the examiner who saw the whole scan (the ground truth)
    reannotation-1    the second examiner, blinded, patch only
    reannotation-2    the same examiner 11 months later, a repeat of reannotation-1

The whole file is read and checked before anything is written, and the writes are one
transaction: a malformed line stops the import with its line number, and nothing is stored.
Re-running with the same file changes nothing; a changed label is updated with its history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from annotator.annotation import bulk_import_labels
from annotator.models import Cell, Round, Study, TaxonNode
from annotator.rounds import examiner, queue_cells
from annotator.taxonomy import DEFAULT_TAXONOMY_FILE, latest_version, load_taxonomy_file
from core.errors import DomainError

from .imagefiles import image_file_problem

NOT_IN_ROUND = "nan"
UNCLASSIFIABLE = "UNC"
ROUND_NAMES = ("gold", "reannotation-1", "reannotation-2")
# The image paths of the release: a class folder and a numbered TIFF of that class.
IMAGE_PATH = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+\.tiff?$")
ITEM_ORDER_SEED = 2019  # the imported rounds' item order (only progress pages use it)


class ImportProblem(DomainError):
    """The file (or the image folder) cannot be imported; the message says where and why."""


@dataclass(frozen=True)
class AnnotationLine:
    number: int
    path: str
    answers: tuple[str | None, ...]  # per round: a class code, UNCLASSIFIABLE, or None (absent)


@dataclass
class ImportReport:
    study: Study
    lines: int = 0
    cells_created: int = 0
    images_attached: int = 0
    labels_created: dict[str, int] = field(default_factory=dict)
    labels_changed: dict[str, int] = field(default_factory=dict)
    labels_unchanged: dict[str, int] = field(default_factory=dict)

    @property
    def changed_anything(self) -> bool:
        return bool(
            self.cells_created
            or self.images_attached
            or any(self.labels_created.values())
            or any(self.labels_changed.values())
        )


def read_annotations(path: str | Path, codes: set[str]) -> list[AnnotationLine]:
    """Parse and check every line; the first problem stops it, naming the file and line."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark, as some Windows editors write, is not part of line 1.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportProblem(f"Cannot read {path}: {exc}") from None
    lines, seen = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path.name}, line {number}"
        fields = raw.split()
        if len(fields) != 4:
            raise ImportProblem(
                f"{where}: expected 4 space-separated fields (path, gold, first and second "
                f"re-annotation), found {len(fields)}: {raw.strip()!r}"
            )
        image, gold, *again = fields
        if not IMAGE_PATH.match(image):
            raise ImportProblem(f"{where}: {image!r} is not an image path like CLASS/NAME.tiff")
        if image in seen:
            raise ImportProblem(f"{where}: {image} is listed already on line {seen[image]}")
        seen[image] = number
        if gold not in codes:
            raise ImportProblem(f"{where}: unknown gold class {gold!r}")
        answers: list[str | None] = [gold]
        for label in again:
            if label == NOT_IN_ROUND:
                answers.append(None)
            elif label == UNCLASSIFIABLE or label in codes:
                answers.append(label)
            else:
                raise ImportProblem(
                    f"{where}: unknown re-annotation class {label!r} "
                    f"(a class code, {UNCLASSIFIABLE} or {NOT_IN_ROUND})"
                )
        lines.append(AnnotationLine(number, image, tuple(answers)))
    if not lines:
        raise ImportProblem(f"{path.name} holds no annotation lines.")
    return lines


def _check_images(lines: list[AnnotationLine], images: Path) -> None:
    """Every listed image must be an image file inside the folder (no link leading out)."""
    if not images.is_dir():
        raise ImportProblem(f"--images {images} is not a folder.")
    problems = []
    for line in lines:
        problem = image_file_problem(images, images / line.path)
        if problem:
            problems.append(f"{line.path} (line {line.number}): {problem}")
    if problems:
        shown = "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
        raise ImportProblem(f"{len(problems)} image(s) missing or unusable under {images}: {shown}")


def imported_round(study: Study, name: str, kind: str, rater, **defaults) -> Round:
    """The named round of an import, made on first use; a round of that name that is not the
    import's own (another kind or rater) stops the import rather than being mixed into."""
    round_, _ = Round.objects.get_or_create(
        study=study, name=name, defaults={"kind": kind, "rater": rater, **defaults}
    )
    if round_.kind != kind or round_.rater_id != rater.pk:
        raise ImportProblem(
            f"Study {study.name} has a round {name!r} that is not the imported {kind} round of "
            f"{rater.get_username()}; rename it or import into another study."
        )
    return round_


def _rounds(study: Study) -> list[Round]:
    first = examiner(study, f"{study.name}-examiner-1", "Examiner 1")
    second = examiner(study, f"{study.name}-examiner-2", "Examiner 2")
    gold = imported_round(study, ROUND_NAMES[0], Round.Kind.GOLD, first)
    blinded = imported_round(study, ROUND_NAMES[1], Round.Kind.BLINDED, second, reference=gold)
    repeat = imported_round(
        study, ROUND_NAMES[2], Round.Kind.REPEAT, second, repeats=blinded, reference=gold
    )
    return [gold, blinded, repeat]


def study_on_taxonomy(
    name: str, taxonomy_name: str, taxonomy_file, *, title: str, description: str, what: str
) -> Study:
    """The study of an import, made on the latest version of its shipped taxonomy; an existing
    study on another taxonomy stops the import."""
    taxonomy = latest_version(taxonomy_name) or load_taxonomy_file(taxonomy_file).taxonomy
    study, _ = Study.objects.get_or_create(
        name=name, defaults={"title": title, "taxonomy": taxonomy, "description": description}
    )
    if study.taxonomy.name != taxonomy_name:
        raise ImportProblem(
            f"Study {name} uses taxonomy {study.taxonomy}, not the {what} {taxonomy_name}."
        )
    return study


def _study(name: str) -> Study:
    return study_on_taxonomy(
        name,
        "aml-18",
        DEFAULT_TAXONOMY_FILE,
        title="AML cytomorphology (TCIA public release)",
        description="Imported from the public Munich AML cytomorphology annotation file.",
        what="AML taxonomy",
    )


def _cells(study: Study, lines, images: Path | None, report: ImportReport) -> dict[str, int]:
    known = dict(study.cells.filter(scan__isnull=True).values_list("external_id", "pk"))
    new = [line for line in lines if line.path not in known]
    made = Cell.objects.bulk_create(
        [Cell(study=study, external_id=line.path) for line in new], batch_size=2000
    )
    known.update({cell.external_id: cell.pk for cell in made})
    report.cells_created = len(made)
    if images is not None:
        without = Cell.objects.filter(study=study, scan__isnull=True, patch="")
        for cell in without.filter(external_id__in=[line.path for line in lines]):
            with (images / cell.external_id).open("rb") as handle:
                stored = default_storage.save(
                    f"patch-cells/{study.name}/{cell.external_id}", File(handle)
                )
            Cell.objects.filter(pk=cell.pk).update(patch=stored)
            report.images_attached += 1
    return known


def _labels(round_: Round, index: int, lines, cells, nodes, report: ImportReport) -> None:
    answers = {
        cells[line.path]: None if answer == UNCLASSIFIABLE else nodes[answer]
        for line in lines
        if (answer := line.answers[index]) is not None
    }
    result = bulk_import_labels(round_, answers)
    report.labels_created[round_.name] = result.created
    report.labels_changed[round_.name] = result.changed
    report.labels_unchanged[round_.name] = result.unchanged
    if round_.kind != Round.Kind.GOLD:
        # The imported re-annotation rounds' queue items, in a seeded, fixed order.
        queue_cells(round_, sorted(answers), shuffle_seed=ITEM_ORDER_SEED)


def import_tcia_aml(
    annotations: str | Path, study_name: str, images: str | Path | None = None
) -> ImportReport:
    """Create or update the study from the release's annotation file (see the module doc)."""
    images = Path(images) if images is not None else None
    with transaction.atomic():
        study = _study(study_name)
        nodes = {node.code: node for node in TaxonNode.objects.filter(taxonomy=study.taxonomy)}
        lines = read_annotations(annotations, set(nodes))
        if images is not None:
            _check_images(lines, images)
        report = ImportReport(study=study, lines=len(lines))
        rounds = _rounds(study)
        cells = _cells(study, lines, images, report)
        for index, round_ in enumerate(rounds):
            _labels(round_, index, lines, cells, nodes, report)
    return report
