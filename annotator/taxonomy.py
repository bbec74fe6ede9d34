"""Taxonomies as data: parse and validate a YAML file, load it as a new version, walk the tree.

The file format is documented in docs/taxonomies.md. Validation collects every problem it can
find and names the node, group or key at fault, so one run tells the author all that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml
from django.db import transaction
from django.db.models import Max

from core.errors import DomainError

from .models import TaxonGroup, TaxonNode, Taxonomy

SHIPPED_DIR = Path(__file__).resolve().parent / "taxonomies"
DEFAULT_TAXONOMY_FILE = SHIPPED_DIR / "aml-18.yaml"

CODE_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{1,15}$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
COLOUR_PATTERN = re.compile(r"^#[0-9a-fA-F]{6}$")
HOTKEY_PATTERN = re.compile(r"^[a-z0-9]$")
# Keys the annotation screen keeps for itself (cannot classify).
RESERVED_HOTKEYS = {"x"}
# Levels of the tree, root included: real cell taxonomies have four or five; the screens and
# reports walk the tree level by level.
MAX_TREE_DEPTH = 32
NODE_KEYS = {"code", "name", "parent", "colour", "hotkey", "aliases"}
TOP_KEYS = {"name", "title", "description", "nodes", "groups"}


class TaxonomyError(DomainError):
    """A taxonomy file that cannot be loaded; `problems` lists every reason found."""

    def __init__(self, problems: list[str], source: str = "taxonomy"):
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems), "file")

    def body(self) -> dict:
        return {"file": self.problems}


@dataclass(frozen=True)
class NodeSpec:
    code: str
    name: str
    parent: str | None
    order: int
    colour: str = ""
    hotkey: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class GroupSpec:
    name: str
    description: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class TaxonomySpec:
    """A validated taxonomy, nodes ordered so every parent comes before its children."""

    name: str
    title: str
    description: str
    nodes: tuple[NodeSpec, ...]
    groups: tuple[GroupSpec, ...] = field(default=())

    def content_sha256(self) -> str:
        """Hash of the meaning of the file, blind to comments, spacing and key order."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def read_taxonomy_file(path: str | Path) -> TaxonomySpec:
    """Read and validate a taxonomy YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaxonomyError(["file not found"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaxonomyError([f"cannot read the file ({exc})"], str(path)) from None
    return parse_taxonomy(text, source=str(path))


def parse_taxonomy(text: str, source: str = "taxonomy") -> TaxonomySpec:
    """Parse YAML text and validate it as a taxonomy; raise TaxonomyError naming each problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaxonomyError([f"not valid YAML ({exc})".replace("\n", " ")], source) from None
    except RecursionError:
        # PyYAML builds nested lists and mappings recursively: thousands of levels exhaust it.
        raise TaxonomyError(
            ["the YAML is nested too deeply to read; a taxonomy needs a few levels"], source
        ) from None
    return validate_taxonomy(data, source)


def validate_taxonomy(data: object, source: str = "taxonomy") -> TaxonomySpec:
    """Validate parsed YAML; every rule of docs/taxonomies.md is checked here."""
    if not isinstance(data, dict):
        raise TaxonomyError(["the file must be a mapping with name, title and nodes"], source)
    problems: list[str] = []
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        problems.append(f"unknown top-level key(s): {', '.join(map(str, unknown))}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.append(f"'name' must be a slug of lowercase letters, digits and '-', not {name!r}")
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        problems.append("'title' is missing")
    description = data.get("description") or ""
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        problems.append("'nodes' must be a non-empty list")
        raise TaxonomyError(problems, source)

    nodes = _read_nodes(raw_nodes, problems)
    ordered = _check_tree(nodes, problems)
    _check_leaves_and_hotkeys(nodes, problems)
    groups = _read_groups(data.get("groups") or {}, nodes, problems)
    if problems:
        raise TaxonomyError(problems, source)
    return TaxonomySpec(
        name=name,
        title=title.strip(),
        description=str(description).strip(),
        nodes=tuple(ordered),
        groups=groups,
    )


def _read_nodes(raw_nodes: list, problems: list[str]) -> dict[str, NodeSpec]:
    nodes: dict[str, NodeSpec] = {}
    sibling_counts: dict[str | None, int] = {}
    for index, raw in enumerate(raw_nodes, start=1):
        where = f"node {index}"
        if not isinstance(raw, dict):
            problems.append(f"{where} must be a mapping with code and name")
            continue
        code = raw.get("code")
        if not isinstance(code, str) or not CODE_PATTERN.match(code):
            problems.append(
                f"{where}: code {code!r} must be 2-16 capitals, digits or '_', "
                "starting with a letter"
            )
            continue
        where = f"node {code}"
        unknown = sorted(set(raw) - NODE_KEYS)
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
        if code in nodes:
            problems.append(f"duplicate code {code} (nodes must have unique codes)")
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}: 'name' is missing")
        parent = raw.get("parent")
        if parent is not None and not isinstance(parent, str):
            problems.append(f"{where}: parent must be a node code, not {parent!r}")
            parent = None
        colour = raw.get("colour") or ""
        if colour and not (isinstance(colour, str) and COLOUR_PATTERN.match(colour)):
            problems.append(f"{where}: colour {colour!r} must look like #1f77b4")
            colour = ""
        hotkey = raw.get("hotkey")
        hotkey = "" if hotkey is None else str(hotkey)
        if hotkey and not HOTKEY_PATTERN.match(hotkey):
            problems.append(f"{where}: hotkey {hotkey!r} must be one lowercase letter or digit")
        aliases = raw.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            problems.append(f"{where}: aliases must be a list of names")
            aliases = []
        order = sibling_counts.get(parent, 0)
        sibling_counts[parent] = order + 1
        nodes[code] = NodeSpec(
            code=code,
            name=str(name or "").strip(),
            parent=parent,
            order=order,
            colour=colour.lower(),
            hotkey=hotkey,
            aliases=tuple(aliases),
        )
    return nodes


def _check_tree(nodes: dict[str, NodeSpec], problems: list[str]) -> list[NodeSpec]:
    """Check parents, the single root and the absence of cycles; return parent-first order."""
    for node in nodes.values():
        if node.parent is not None and node.parent not in nodes:
            problems.append(f"node {node.code} names unknown parent {node.parent}")
        if node.parent == node.code:
            problems.append(f"node {node.code} is its own parent (cycle)")
    roots = [node.code for node in nodes.values() if node.parent is None]
    if len(roots) > 1:
        problems.append(
            f"more than one root: {', '.join(roots)} (exactly one node may have no parent)"
        )
    elif not roots:
        problems.append("no root: every node names a parent, so the tree has a cycle")

    children: dict[str, list[NodeSpec]] = {}
    for node in nodes.values():
        if node.parent in nodes:
            children.setdefault(node.parent, []).append(node)
    ordered: list[NodeSpec] = []
    pending = deque((nodes[code], 1) for code in roots)
    deepest = 0
    while pending:
        node, level = pending.popleft()
        ordered.append(node)
        deepest = max(deepest, level)
        pending.extend((child, level + 1) for child in children.get(node.code, []))
    if deepest > MAX_TREE_DEPTH:
        problems.append(
            f"the tree is {deepest} levels deep; at most {MAX_TREE_DEPTH} levels are allowed"
        )
    reached = {node.code for node in ordered}
    unreachable = [
        code
        for code, node in nodes.items()
        if code not in reached and node.parent in nodes and node.parent != code
    ]
    if unreachable:
        problems.append(
            f"cycle: {_describe_cycle(unreachable[0], nodes)} (a node cannot be its own ancestor)"
        )
    return ordered


def _describe_cycle(start: str, nodes: dict[str, NodeSpec]) -> str:
    path = [start]
    current = nodes[start].parent
    while current is not None and current in nodes and current not in path:
        path.append(current)
        current = nodes[current].parent
    if current in path:
        path = [*path[path.index(current) :], current]
    return " -> ".join(path)


def _check_leaves_and_hotkeys(nodes: dict[str, NodeSpec], problems: list[str]) -> None:
    parents = {node.parent for node in nodes.values()}
    holders: dict[str, str] = {}
    for node in nodes.values():
        is_leaf = node.code not in parents
        if is_leaf and not node.hotkey:
            problems.append(f"leaf {node.code} has no hotkey")
        if is_leaf and not node.colour:
            problems.append(f"leaf {node.code} has no colour")
        if not is_leaf and node.hotkey:
            problems.append(f"node {node.code} has children, so it cannot have a hotkey")
        if node.hotkey in RESERVED_HOTKEYS:
            problems.append(
                f"node {node.code}: hotkey {node.hotkey!r} is reserved (cannot classify)"
            )
        if node.hotkey and node.hotkey in holders:
            problems.append(
                f"duplicate hotkey {node.hotkey!r} on {holders[node.hotkey]} and {node.code}"
            )
        elif node.hotkey:
            holders[node.hotkey] = node.code


def _read_groups(
    raw_groups: object, nodes: dict[str, NodeSpec], problems: list[str]
) -> tuple[GroupSpec, ...]:
    if not isinstance(raw_groups, dict):
        problems.append("'groups' must be a mapping of group name to its nodes")
        return ()
    groups = []
    for group_name, raw in raw_groups.items():
        if not isinstance(group_name, str) or not NAME_PATTERN.match(group_name):
            problems.append(f"group name {group_name!r} must be a lowercase slug")
            continue
        if isinstance(raw, list):
            raw = {"nodes": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("nodes"), list) or not raw["nodes"]:
            problems.append(f"group {group_name} must list its nodes")
            continue
        codes = tuple(str(code) for code in raw["nodes"])
        for code in codes:
            if code not in nodes:
                problems.append(f"group {group_name} names unknown node {code}")
        groups.append(GroupSpec(group_name, str(raw.get("description") or "").strip(), codes))
    return tuple(groups)


@dataclass(frozen=True)
class LoadResult:
    taxonomy: Taxonomy
    created: bool


@transaction.atomic
def load_taxonomy(spec: TaxonomySpec, source_file: str = "") -> LoadResult:
    """Store a validated taxonomy as a new version, or return the version with the same content.

    A version is never edited: a changed file always becomes the next version, so labels made
    with the old version keep their meaning.
    """
    existing = Taxonomy.objects.filter(name=spec.name, source_sha256=spec.content_sha256()).first()
    if existing:
        return LoadResult(existing, created=False)
    # Lock the name's versions so two loads of one name cannot both take the same number.
    latest = (
        Taxonomy.objects.select_for_update()
        .filter(name=spec.name)
        .aggregate(latest=Max("version"))["latest"]
    )
    taxonomy = Taxonomy.objects.create(
        name=spec.name,
        version=(latest or 0) + 1,
        title=spec.title,
        description=spec.description,
        source_sha256=spec.content_sha256(),
        source_file=source_file,
    )
    parents = {node.parent for node in spec.nodes}
    created: dict[str, TaxonNode] = {}
    for node in spec.nodes:  # parent-first order
        created[node.code] = TaxonNode.objects.create(
            taxonomy=taxonomy,
            code=node.code,
            name=node.name,
            parent=created.get(node.parent),
            order=node.order,
            colour=node.colour,
            hotkey=node.hotkey,
            is_leaf=node.code not in parents,
            aliases=list(node.aliases),
        )
    for group in spec.groups:
        row = TaxonGroup.objects.create(
            taxonomy=taxonomy, name=group.name, description=group.description
        )
        row.nodes.set([created[code] for code in group.nodes])
    return LoadResult(taxonomy, created=True)


def load_taxonomy_file(path: str | Path) -> LoadResult:
    """Read, validate and load one taxonomy file."""
    return load_taxonomy(read_taxonomy_file(path), source_file=Path(path).name)


def load_shipped_taxonomies() -> list[LoadResult]:
    """Load every taxonomy shipped in annotator/taxonomies/ (idempotent)."""
    return [load_taxonomy_file(path) for path in sorted(SHIPPED_DIR.glob("*.yaml"))]


def latest_version(name: str) -> Taxonomy | None:
    return Taxonomy.objects.filter(name=name).order_by("-version").first()


class TaxonTree:
    """One taxonomy's nodes read once, as a tree that does not change: children in sibling
    order (`order`, then id), a node's parent and lineage up to the root, its subtree and the
    leaves under it. Nodes are named by code, which is unique within a taxonomy.

    The one place the parent -> children map of stored nodes is built; the screens, reports,
    class maps and importers walk the tree through it.
    """

    __slots__ = ("_by_code", "_children", "_parent", "preorder", "root")

    def __init__(self, nodes: Iterable[TaxonNode]):
        ordered = sorted(nodes, key=lambda node: (node.order, node.pk))
        by_pk = {node.pk: node for node in ordered}
        children: dict[str | None, list[TaxonNode]] = {}
        parent: dict[str, str | None] = {}
        for node in ordered:
            above = by_pk.get(node.parent_id)
            parent[node.code] = above.code if above is not None else None
            if node.parent_id is None or above is not None:
                children.setdefault(parent[node.code], []).append(node)
        self._by_code = MappingProxyType({node.code: node for node in ordered})
        self._parent = MappingProxyType(parent)
        self._children = MappingProxyType({key: tuple(kids) for key, kids in children.items()})
        roots = self._children.get(None, ())
        self.root: TaxonNode | None = roots[0] if roots else None
        self.preorder: tuple[TaxonNode, ...] = tuple(
            node for root in roots for node in self.subtree(root.code)
        )

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def node(self, code: str) -> TaxonNode:
        """The node of a code; KeyError when the taxonomy has none."""
        return self._by_code[code]

    def children(self, code: str) -> tuple[TaxonNode, ...]:
        """The node's children in sibling order (none for a leaf)."""
        self.node(code)
        return self._children.get(code, ())

    def parent(self, code: str) -> TaxonNode | None:
        """The node's parent, None for the root."""
        above = self._parent[code]
        return None if above is None else self._by_code[above]

    def lineage(self, code: str) -> tuple[str, ...]:
        """The code and its ancestors' codes, nearest first, the root's last."""
        chain = [code]
        while (above := self._parent[chain[-1]]) is not None:
            chain.append(above)
        return tuple(chain)

    def is_within(self, code: str, top: str) -> bool:
        """Whether the node is `top` or lies under it."""
        return top in self.lineage(code)

    def subtree(self, code: str) -> tuple[TaxonNode, ...]:
        """The node and every node below it, in tree order."""
        found, pending = [], [self.node(code)]
        while pending:
            current = pending.pop()
            found.append(current)
            pending.extend(reversed(self._children.get(current.code, ())))
        return tuple(found)

    def leaves_under(self, code: str) -> tuple[TaxonNode, ...]:
        """The leaves of the subtree rooted at the node (the node itself if it is a leaf), in
        tree order."""
        return tuple(node for node in self.subtree(code) if node.code not in self._children)


def taxon_tree(taxonomy: Taxonomy | int) -> TaxonTree:
    """The tree of a taxonomy (or of a taxonomy id); a taxonomy's prefetched nodes are used."""
    if isinstance(taxonomy, Taxonomy):
        return TaxonTree(taxonomy.nodes.all())
    return TaxonTree(TaxonNode.objects.filter(taxonomy=taxonomy))


def leaves_under(node: TaxonNode) -> list[TaxonNode]:
    """The leaves of the subtree rooted at `node` (the node itself if it is a leaf), by id."""
    leaves = taxon_tree(node.taxonomy).leaves_under(node.code)
    return sorted(leaves, key=lambda leaf: leaf.pk)


def group_leaf_codes(group: TaxonGroup) -> set[str]:
    """Leaf codes answering "yes" to a group's question."""
    members = list(group.nodes.all())
    if not members:
        return set()
    tree = taxon_tree(members[0].taxonomy)
    return {leaf.code for member in members for leaf in tree.leaves_under(member.code)}


def classes_in_groups(
    taxonomy: Taxonomy, class_nodes: Mapping[str, Iterable[str]]
) -> dict[str, set[str]]:
    """Each of the taxonomy's groups as the set of classes answering "yes" to its question.

    `class_nodes` names each class's node codes (a class of a report or of a class map may
    merge several nodes). A class answers "yes" when one of its nodes, or an ancestor of one,
    is among the group's nodes; a code outside the taxonomy is only itself.
    """
    tree = taxon_tree(taxonomy)
    lineages = {
        klass: {
            above for code in codes for above in (tree.lineage(code) if code in tree else (code,))
        }
        for klass, codes in class_nodes.items()
    }
    groups = {}
    for group in taxonomy.groups.prefetch_related("nodes"):
        members = {node.code for node in group.nodes.all()}
        groups[group.name] = {klass for klass, above in lineages.items() if members & above}
    return groups
