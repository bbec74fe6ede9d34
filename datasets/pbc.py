"""Importer of the Barcelona peripheral blood cell set (PBC, 2019) into a study on `pbc-8`.

The release is one folder per class (`basophil`, `ig`, `neutrophil`, ...) of pre-cropped JPG
images whose file-name prefix, the part before the first `_`, names the sub-type
(`SNE_12345.jpg`, `MY_100.jpg`). The taxonomy's aliases say what maps where: a folder by the
node's lower-case aliases, a prefix by the upper-case ones. A prefix must name the folder's node
or a node under it; a prefix naming the folder's node itself (`NEUTROPHIL_...`, `IG_...`) gives
the internal node: the class is known, the sub-type is not.

Each image becomes a patch-only cell (`external_id` = `folder/file.jpg`, the image copied into
storage) with a gold label in the round `gold` of an examiner who cannot log in. Everything is
checked before anything is written: unknown folders, unknown or misplaced prefixes and files
that are not JPG images are all collected and reported together, never guessed, and the import
then stops with nothing stored. Re-running with the same folders changes nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from annotator.annotation import bulk_import_labels
from annotator.models import Cell, Round, Study, TaxonNode
from annotator.rounds import examiner
from annotator.taxonomy import SHIPPED_DIR, TaxonTree
from datasets.imagefiles import image_file_problem
from datasets.importers import ImportProblem, imported_round, study_on_taxonomy

PBC_TAXONOMY = "pbc-8"
PBC_TAXONOMY_FILE = SHIPPED_DIR / "pbc-8.yaml"
GOLD_ROUND = "gold"
JPG_SUFFIXES = {".jpg", ".jpeg"}
JPEG_SIGNATURE = b"\xff\xd8\xff"
EXAMPLES_SHOWN = 3
EXTERNAL_ID_MAX = Cell._meta.get_field("external_id").max_length
BATCH = 2000


class PbcImportProblems(ImportProblem):
    """The folders cannot be imported as they are; `problems` lists every reason found."""

    def __init__(self, root: Path, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} problem(s) in {root}:\n{listing}")


@dataclass(frozen=True)
class PbcImage:
    """One image of the release and the node its folder and prefix give it."""

    folder: str
    file: str
    path: Path
    node: TaxonNode

    @property
    def external_id(self) -> str:
        return f"{self.folder}/{self.file}"


@dataclass
class PbcImportReport:
    study: Study
    images: int = 0
    per_class: dict[str, Counter] = field(default_factory=dict)  # folder -> node code -> n
    cells_created: int = 0
    images_copied: int = 0
    labels_created: int = 0
    labels_changed: int = 0
    labels_unchanged: int = 0

    @property
    def changed_anything(self) -> bool:
        return bool(
            self.cells_created or self.images_copied or self.labels_created or self.labels_changed
        )


class _Findings:
    """Problems grouped by kind and key, so each is reported once with a count and examples."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
        self.describe: dict[tuple[str, ...], str] = {}

    def add(self, key: tuple[str, ...], description: str, file: str | None) -> None:
        """Record a file (or, with None, just the problem, e.g. an empty unknown folder)."""
        self.groups[key].extend([file] if file is not None else [])
        self.describe[key] = description

    def messages(self) -> list[str]:
        lines = []
        for key in sorted(self.groups):
            files = sorted(self.groups[key])
            if not files:
                lines.append(f"{self.describe[key]} (empty)")
                continue
            examples = ", ".join(files[:EXAMPLES_SHOWN])
            more = ", ..." if len(files) > EXAMPLES_SHOWN else ""
            lines.append(f"{self.describe[key]} ({len(files)} file(s), e.g. {examples}{more})")
        return lines


def _alias_tables(nodes: list[TaxonNode]) -> tuple[dict[str, TaxonNode], dict[str, TaxonNode]]:
    """Folder names (lower-case aliases) and file-name prefixes (upper-case aliases) to nodes."""
    folders, prefixes = {}, {}
    for node in nodes:
        for alias in node.aliases:
            if alias.islower():
                folders[alias] = node
            elif alias.isupper():
                prefixes[alias] = node
    return folders, prefixes


def _is_jpeg(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(JPEG_SIGNATURE)) == JPEG_SIGNATURE
    except OSError:
        return False


def scan_pbc_folders(root: str | Path, nodes: list[TaxonNode]) -> list[PbcImage]:
    """Map every image under `root` to its node; raise PbcImportProblems listing all misfits.

    Hidden entries (names starting with "."), such as macOS `.DS_Store` files, are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImportProblem(f"{root} is not a folder.")
    folders, prefixes = _alias_tables(nodes)
    tree = TaxonTree(nodes)
    findings = _Findings()
    images: list[PbcImage] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            findings.add(("loose",), "not inside a class folder", entry.name)
            continue
        folder_node = folders.get(entry.name.lower())
        files = sorted(f for f in entry.iterdir() if not f.name.startswith("."))
        if folder_node is None:
            known = ", ".join(sorted(folders))
            problem = f"unknown folder {entry.name!r} (the known folders are {known})"
            for file in files or [None]:
                findings.add(("folder", entry.name), problem, file and file.name)
            continue
        for file in files:
            image = _check_image(root, entry.name, file, folder_node, prefixes, tree, findings)
            if image is not None:
                images.append(image)
    problems = findings.messages()
    if not images and not problems:
        problems.append("no JPG images found in any class folder")
    if problems:
        raise PbcImportProblems(root, problems)
    return images


def _check_image(
    root: Path,
    folder: str,
    file: Path,
    folder_node: TaxonNode,
    prefixes: dict[str, TaxonNode],
    tree: TaxonTree,
    findings: _Findings,
) -> PbcImage | None:
    """The image's node, or None after recording why the file cannot be imported."""
    if not file.resolve().is_relative_to(root.resolve()):
        findings.add(("link", folder), f"{folder}: a link that leads out of the folder", file.name)
        return None
    if file.is_dir():
        findings.add(("subfolder", folder), f"{folder}: a sub-folder, not an image", file.name)
        return None
    if file.suffix.lower() not in JPG_SUFFIXES:
        findings.add(("not-jpg", folder), f"{folder}: not a .jpg file", file.name)
        return None
    if not _is_jpeg(file):
        findings.add(("not-jpeg", folder), f"{folder}: named .jpg but not a JPEG image", file.name)
        return None
    problem = image_file_problem(root, file)
    if problem:
        findings.add(("unusable", folder, problem), f"{folder}: {problem}", file.name)
        return None
    if len(f"{folder}/{file.name}") > EXTERNAL_ID_MAX:
        findings.add(
            ("long", folder), f"{folder}: name longer than {EXTERNAL_ID_MAX} characters", file.name
        )
        return None
    if "_" not in file.stem:
        findings.add(("no-prefix", folder), f"{folder}: no file-name prefix before '_'", file.name)
        return None
    prefix = file.stem.split("_", 1)[0].upper()
    node = prefixes.get(prefix)
    if node is None:
        findings.add(
            ("prefix", folder, prefix), f"{folder}: unknown file-name prefix {prefix!r}", file.name
        )
        return None
    if not tree.is_within(node.code, folder_node.code):
        findings.add(
            ("outside", folder, prefix),
            f"{folder}: prefix {prefix!r} names {node.code} ({node.name}), which is neither "
            f"the folder's {folder_node.code} ({folder_node.name}) nor under it",
            file.name,
        )
        return None
    return PbcImage(folder=folder, file=file.name, path=file, node=node)


def _study(name: str) -> Study:
    return study_on_taxonomy(
        name,
        PBC_TAXONOMY,
        PBC_TAXONOMY_FILE,
        title="Peripheral blood cells (Barcelona 2019)",
        description="Imported from the Barcelona PBC image folders.",
        what="peripheral blood taxonomy",
    )


def _gold_round(study: Study) -> Round:
    """The round `gold` of the release's examiner: a user who cannot log in, annotator here."""
    rater = examiner(study, f"{study.name}-pbc-examiner", "PBC examiner")
    return imported_round(study, GOLD_ROUND, Round.Kind.GOLD, rater)


def _cells(
    study: Study, images: list[PbcImage], stored: list[str], report: PbcImportReport
) -> dict[str, int]:
    """Cell ids by external id: existing cells are kept, new ones get their image copied."""
    existing = {
        external_id: (pk, patch)
        for external_id, pk, patch in study.cells.filter(scan__isnull=True)
        .exclude(external_id="")
        .values_list("external_id", "pk", "patch")
    }
    new_cells = []
    for image in images:
        if image.external_id in existing and existing[image.external_id][1]:
            continue
        with image.path.open("rb") as handle:
            name = default_storage.save(
                f"patch-cells/{study.name}/{image.external_id}", File(handle, name=image.file)
            )
        stored.append(name)
        report.images_copied += 1
        if image.external_id in existing:
            Cell.objects.filter(pk=existing[image.external_id][0]).update(patch=name)
        else:
            new_cells.append(Cell(study=study, external_id=image.external_id, patch=name))
    made = Cell.objects.bulk_create(new_cells, batch_size=BATCH)
    report.cells_created = len(made)
    ids = {external_id: pk for external_id, (pk, _) in existing.items()}
    ids.update({cell.external_id: cell.pk for cell in made})
    return ids


def _labels(
    round_: Round, images: list[PbcImage], cells: dict[str, int], report: PbcImportReport
) -> None:
    """The gold labels: missing ones made, changed ones corrected, each with its history."""
    result = bulk_import_labels(round_, {cells[image.external_id]: image.node for image in images})
    report.labels_created = result.created
    report.labels_changed = result.changed
    report.labels_unchanged = result.unchanged


def import_pbc(root: str | Path, study_name: str) -> PbcImportReport:
    """Create or update the study from the release's class folders (see the module doc).

    One transaction; images copied into storage before a failure are removed again.
    """
    stored: list[str] = []
    try:
        with transaction.atomic():
            study = _study(study_name)
            nodes = list(TaxonNode.objects.filter(taxonomy=study.taxonomy))
            images = scan_pbc_folders(root, nodes)
            report = PbcImportReport(study=study, images=len(images))
            for image in images:
                report.per_class.setdefault(image.folder, Counter())[image.node.code] += 1
            round_ = _gold_round(study)
            cells = _cells(study, images, stored, report)
            _labels(round_, images, cells, report)
    except BaseException:
        for name in stored:
            default_storage.delete(name)
        raise
    return report
