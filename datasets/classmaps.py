"""Class maps: count the labelled cells per taxonomy node, propose which nodes to merge, save.

The proposal follows the original study's rule: a leaf with fewer than `threshold` cells (10
there) is merged into its parent, i.e. the parent is collapsed into one class; a collapsed node
that still holds fewer than the threshold is merged into its own parent in turn, up to (never
including) the root. A leaf without any cell is simply absent (no class, no merge), and a node
that cells were labelled with directly (the public release labels MYO, not its two leaves) is
collapsed, since those cells belong to no single leaf. On the public AML labels this collapses
MYO and PMO and gives the 15 classes of the release.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from django.db import transaction

from annotator.models import Label, Round, Study, TaxonNode
from annotator.rounds import largest_gold_round
from annotator.taxonomy import TaxonTree, classes_in_groups, taxon_tree
from core import params
from core.errors import DomainError, check_field

from .models import ClassMap

DEFAULT_THRESHOLD = 10
MAX_THRESHOLD = 10**9  # cells; the page, the API and the command take the same bounds


@dataclass
class TreeNode:
    code: str
    name: str
    parent: str | None
    leaf: bool
    depth: int
    direct: int = 0  # cells labelled with this node itself
    total: int = 0  # cells labelled with it or any node below it
    children: list[str] = field(default_factory=list)


@dataclass
class Proposal:
    """The tree with counts, the collapsed nodes and the classes they give."""

    tree: list[TreeNode]  # depth-first order
    collapsed: list[str]
    classes: list[dict]  # [{code, name, nodes, cells}]
    threshold: int
    notes: list[str]

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "collapsed": self.collapsed,
            "classes": self.classes,
            "notes": self.notes,
            "tree": [node.__dict__ for node in self.tree],
        }


def label_counts(study: Study, round_: Round | None = None) -> Counter:
    """Cells per node code in the label source (the gold round with most labels by default);
    "cannot classify" is not a class and is left out."""
    round_ = round_ or gold_source(study)
    labels = Label.objects.filter(round=round_, cannot_classify=False)
    return Counter(labels.values_list("node__code", flat=True))


def gold_source(study: Study) -> Round:
    """The default label source: the study's gold round with the most labels."""
    gold = largest_gold_round(study)
    if gold is None:
        raise DomainError(f"Study {study.name} has no gold round yet.", field="source")
    return gold


def build_tree(taxa: TaxonTree, counts: Counter) -> dict[str, TreeNode]:
    """The taxonomy as TreeNodes in depth-first order, with direct and subtree counts."""
    tree: dict[str, TreeNode] = {}

    def visit(node: TaxonNode, depth: int) -> int:
        parent = taxa.parent(node.code)
        item = TreeNode(node.code, node.name, parent.code if parent else None, node.is_leaf, depth)
        item.direct = counts.get(node.code, 0)
        tree[node.code] = item
        children = taxa.children(node.code)
        item.children = [child.code for child in children]
        item.total = item.direct + sum(visit(child, depth + 1) for child in children)
        return item.total

    if taxa.root is not None:
        visit(taxa.root, 0)
    return tree


def _outermost(taxa: TaxonTree, codes: set[str]) -> set[str]:
    """The codes with none of the others above them (a node inside a collapsed one is merged
    anyway)."""
    return {code for code in codes if not codes.intersection(taxa.lineage(code)[1:])}


def _propose_collapsed(
    tree: dict[str, TreeNode], taxa: TaxonTree, threshold: int
) -> tuple[set[str], list[str]]:
    """Parents of thin leaves (1 to threshold - 1 cells), and nodes that cells were labelled
    with directly (their cells cannot be put in any one leaf), merged upwards while thin."""
    collapsed: set[str] = set()
    notes: list[str] = []
    pending = [code for code, node in tree.items() if node.leaf and 0 < node.total < threshold]
    for code, node in tree.items():
        if not node.leaf and node.direct and node.parent is not None:
            collapsed.add(code)
            if node.total < threshold:
                pending.append(code)
    while pending:
        code = pending.pop()
        parent = tree[code].parent
        if parent is None or tree[parent].parent is None:
            notes.append(
                f"{code} has {tree[code].total} cells (under {threshold}) but its parent is the "
                "root; it stays a class of its own."
            )
            continue
        if parent not in collapsed:
            collapsed.add(parent)
            if tree[parent].total < threshold:
                pending.append(parent)
    return _outermost(taxa, collapsed), notes


def classes_for(tree: dict[str, TreeNode], taxa: TaxonTree, collapsed: set[str]) -> list[dict]:
    """The classes a set of collapsed nodes gives, in tree order: each collapsed node, each leaf
    outside them, and each internal node outside them that cells were labelled with directly;
    a class without any cell is not a class of the data and is left out."""
    classes = []
    for code, node in tree.items():
        if collapsed.intersection(taxa.lineage(code)[1:]):
            continue
        if code in collapsed:
            members = [member.code for member in taxa.subtree(code)]
            classes.append(_class(node, members, node.total))
        elif node.direct:
            classes.append(_class(node, [code], node.direct))
    return classes


def _class(node: TreeNode, members: list[str], cells: int) -> dict:
    return {"code": node.code, "name": node.name, "nodes": members, "cells": cells}


def propose(
    study: Study,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    collapse: list[str] | tuple[str, ...] = (),
    expand: list[str] | tuple[str, ...] = (),
    source: Round | None = None,
) -> Proposal:
    """The rule's proposal, adjusted by hand: `collapse` merges more nodes, `expand` undoes
    the merge of a proposed node."""
    threshold = params.whole_number(threshold, "threshold", 0, MAX_THRESHOLD)
    taxa = taxon_tree(study.taxonomy_id)
    tree = build_tree(taxa, label_counts(study, source))
    unknown = sorted((set(collapse) | set(expand)) - set(tree))
    if unknown:
        raise DomainError(f"Unknown node(s) {', '.join(unknown)} in {study.taxonomy}.", "collapse")
    leaves = sorted(code for code in collapse if tree[code].leaf)
    if leaves:
        raise DomainError(f"{', '.join(leaves)}: a leaf cannot be collapsed.", field="collapse")
    roots = sorted(code for code in collapse if tree[code].parent is None)
    if roots:
        raise DomainError(f"{roots[0]} is the root: collapsing it makes one class.", "collapse")
    proposed, notes = _propose_collapsed(tree, taxa, threshold)
    chosen = _outermost(taxa, (proposed | set(collapse)) - set(expand))
    order = list(tree)
    collapsed = sorted(chosen, key=order.index)
    for node in expand:
        if node in proposed:
            notes.append(f"{node} expanded by hand: its leaves stay separate classes.")
    empty = [code for code, node in tree.items() if node.leaf and node.total == 0]
    if empty:
        notes.append(f"No cells of {', '.join(empty)}: they are no class of this data.")
    return Proposal(
        list(tree.values()), collapsed, classes_for(tree, taxa, set(collapsed)), threshold, notes
    )


@transaction.atomic
def save_class_map(
    study: Study, name: str, proposal: Proposal, user, notes: str = ""
) -> tuple[ClassMap, bool]:
    """Store the proposal as the next version of the named map; an unchanged map is found, not
    stored again. Returns (map, created)."""
    if not name:
        raise DomainError("A class map needs a name.", field="name")
    check_field(ClassMap, "name", name, "Class map name")
    latest = (
        ClassMap.objects.select_for_update()
        .filter(study=study, name=name)
        .order_by("-version")
        .first()
    )
    classes = [{k: c[k] for k in ("code", "name", "nodes")} for c in proposal.classes]
    if latest and latest.collapsed == proposal.collapsed and latest.classes == classes:
        return latest, False
    made = ClassMap.objects.create(
        study=study,
        taxonomy=study.taxonomy,
        name=name,
        version=(latest.version + 1) if latest else 1,
        collapsed=proposal.collapsed,
        classes=classes,
        threshold=proposal.threshold,
        notes=notes,
        created_by=user,
    )
    return made, True


def find_class_map(study: Study, reference: str) -> ClassMap:
    """A map by `NAME` (its latest version) or `NAME@VERSION`."""
    name, _, version = reference.partition("@")
    maps = ClassMap.objects.filter(study=study, name=name)
    if version:
        if not version.isdigit():
            raise DomainError(f"Version {version!r} of class map {name} is not a number.")
        maps = maps.filter(version=int(version))
    found = maps.order_by("-version").first()
    if found is None:
        raise DomainError(f"No class map {reference!r} in study {study.name}.", field="classmap")
    return found


def class_nodes(classes: list[str], class_map: ClassMap | None) -> dict[str, list[str]]:
    """Each class's taxonomy node codes: its class map's members, or the code itself."""
    if class_map is None:
        return {code: [code] for code in classes}
    members = {item["code"]: item["nodes"] for item in class_map.classes}
    return {code: members[code] for code in classes}


def class_groups(study: Study, classes: list[str], class_map: ClassMap | None) -> dict[str, set]:
    """Each taxonomy group as the set of classes answering "yes": a class whose nodes (or their
    ancestors) are among the group's nodes."""
    return classes_in_groups(study.taxonomy, class_nodes(classes, class_map))
