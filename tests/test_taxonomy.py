"""Taxonomies as data: the shipped trees, validation messages, versioning and the command."""

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotator.models import Label, Taxonomy
from annotator.taxonomy import (
    SHIPPED_DIR,
    TaxonomyError,
    classes_in_groups,
    group_leaf_codes,
    load_shipped_taxonomies,
    load_taxonomy,
    load_taxonomy_file,
    parse_taxonomy,
    read_taxonomy_file,
    taxon_tree,
)

from .conftest import SHARED_DATA

VALID = """
name: tiny
title: Tiny tree
nodes:
  - {code: ROOT, name: Root}
  - {code: AAA, name: A node, parent: ROOT}
  - {code: AA1, name: A one, parent: AAA, colour: "#112233", hotkey: a}
  - {code: AA2, name: A two, parent: AAA, colour: "#223344", hotkey: b}
  - {code: BBB, name: B leaf, parent: ROOT, colour: "#334455", hotkey: c}
groups:
  first: {description: The A branch, nodes: [AAA]}
"""


def public_codes() -> set[str]:
    """The 15 class codes of the public AML data set: the block after the dashed rule."""
    text = (SHARED_DATA / "tcia-aml-cytomorphology" / "abbreviations.txt").read_text()
    block = text.split("-----\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0] for line in block.splitlines() if line.strip()}


def test_valid_file_parses_parent_first_with_sibling_order():
    spec = parse_taxonomy(VALID)
    assert [n.code for n in spec.nodes] == ["ROOT", "AAA", "BBB", "AA1", "AA2"]
    assert {n.code: n.order for n in spec.nodes}["AA2"] == 1
    assert spec.groups[0].nodes == ("AAA",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("{code: BBB, name: B leaf, parent: ROOT", "{code: AA1, name: B leaf, parent: ROOT"),
            "duplicate code AA1",
        ),
        (
            ("{code: BBB, name: B leaf, parent: ROOT", "{code: BBB, name: B leaf"),
            "more than one root: ROOT, BBB",
        ),
        (
            ("{code: AAA, name: A node, parent: ROOT}", "{code: AAA, name: A node, parent: AA1}"),
            "cycle: AAA -> AA1 -> AAA",
        ),
        (("nodes: [AAA]", "nodes: [AAA, ZZZ]"), "group first names unknown node ZZZ"),
        (("hotkey: b", "hotkey: a"), "duplicate hotkey 'a' on AA1 and AA2"),
        (("hotkey: c", "hotkey: x"), "hotkey 'x' is reserved"),
        (("parent: ROOT, colour", "parent: NOPE, colour"), "node BBB names unknown parent NOPE"),
        ((", hotkey: c}", "}"), "leaf BBB has no hotkey"),
        (('colour: "#334455", ', ""), "leaf BBB has no colour"),
        (("{code: AAA, name: A node", "{code: aaa, name: A node"), "code 'aaa' must be"),
    ],
)
def test_invalid_file_names_the_problem(change, message):
    old, new = change
    assert old in VALID
    with pytest.raises(TaxonomyError) as caught:
        parse_taxonomy(VALID.replace(old, new, 1))
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_not_yaml_and_not_a_mapping_are_refused():
    with pytest.raises(TaxonomyError, match="not valid YAML"):
        parse_taxonomy("nodes: [unclosed")
    with pytest.raises(TaxonomyError, match="must be a mapping"):
        parse_taxonomy("- just\n- a list\n")


def test_every_problem_is_reported_at_once():
    broken = VALID.replace("hotkey: b", "hotkey: a").replace("nodes: [AAA]", "nodes: [ZZZ]")
    with pytest.raises(TaxonomyError) as caught:
        parse_taxonomy(broken)
    assert len(caught.value.problems) == 2


@pytest.mark.django_db
def test_shipped_aml_tree_has_18_leaves_that_collapse_to_the_15_public_codes():
    taxonomy = load_taxonomy_file(SHIPPED_DIR / "aml-18.yaml").taxonomy
    leaves = list(taxonomy.nodes.filter(is_leaf=True))
    assert len(leaves) == 18
    collapsed = {
        leaf.parent.code if leaf.parent.code in {"MYO", "PMO"} else leaf.code for leaf in leaves
    }
    assert collapsed == public_codes()
    assert len({leaf.hotkey for leaf in leaves}) == 18
    root = taxonomy.nodes.get(parent__isnull=True)
    assert sorted(root.children.values_list("code", flat=True)) == ["KSC", "PAT", "PHY"]
    assert taxonomy.nodes.get(code="PHY").children.count() == 6
    assert taxonomy.nodes.get(code="PAT").children.filter(is_leaf=True).count() == 6


@pytest.mark.django_db
def test_aml_groups_answer_the_two_clinical_questions():
    taxonomy = load_taxonomy_file(SHIPPED_DIR / "aml-18.yaml").taxonomy
    assert group_leaf_codes(taxonomy.groups.get(name="blast")) == {"MYON", "MYOA", "MOB"}
    atypical = group_leaf_codes(taxonomy.groups.get(name="atypical"))
    assert len(atypical) == 11 and "NGS" not in atypical and "KSC" not in atypical


@pytest.mark.django_db
def test_all_shipped_taxonomies_load_and_loading_twice_changes_nothing():
    first = load_shipped_taxonomies()
    assert {result.taxonomy.name for result in first} == {"aml-18", "pbc-8", "bone-marrow"}
    assert all(result.created for result in first)
    again = load_shipped_taxonomies()
    assert not any(result.created for result in again)
    assert Taxonomy.objects.count() == 3
    pbc = Taxonomy.objects.get(name="pbc-8")
    assert pbc.nodes.get(code="IG").is_leaf is False
    marrow = Taxonomy.objects.get(name="bone-marrow")
    assert marrow.nodes.filter(code="OTHER").exists()


@pytest.mark.django_db
def test_changed_file_becomes_a_new_version_and_the_old_one_is_kept(tmp_path, annotator, scan):
    from annotator.annotation import create_cell, gold_round_for, set_label

    path = tmp_path / "tiny.yaml"
    path.write_text(VALID)
    v1 = load_taxonomy_file(path).taxonomy
    path.write_text(VALID + "\n# a comment changes nothing\n")
    assert load_taxonomy_file(path).taxonomy == v1
    path.write_text(VALID.replace("name: B leaf", 'name: "B leaf, renamed"'))
    v2 = load_taxonomy_file(path).taxonomy
    assert (v1.version, v2.version) == (1, 2)
    assert v1.nodes.get(code="BBB").name == "B leaf"
    assert v2.nodes.get(code="BBB").name == "B leaf, renamed"
    # Labels keep pointing at the version they were made with.
    cell = create_cell(scan.studies.first(), scan, 10, 10, annotator)
    label, _ = set_label(cell, gold_round_for(cell.study, annotator), annotator, node="NGS")
    load_shipped_taxonomies()
    assert Label.objects.get(pk=label.pk).node.taxonomy.version == 1
    assert Taxonomy.objects.filter(name="aml-18").count() == 1


@pytest.mark.django_db
def test_load_taxonomy_command_prints_the_version_and_lists_every_problem(tmp_path):
    out = StringIO()
    call_command("load_taxonomy", str(SHIPPED_DIR / "aml-18.yaml"), stdout=out)
    assert "loaded as aml-18 v1 (18 leaves" in out.getvalue()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        VALID.replace("hotkey: b", "hotkey: a").replace(
            'parent: AAA, colour: "#112233"', 'parent: AA2, colour: "#112233"'
        )
    )
    with pytest.raises(CommandError) as caught:
        call_command("load_taxonomy", str(bad))
    assert "duplicate hotkey 'a'" in str(caught.value)
    missing = Path(tmp_path / "nope.yaml")
    with pytest.raises(CommandError, match="file not found"):
        call_command("load_taxonomy", str(missing))


@pytest.fixture
def tiny(db):
    return load_taxonomy(parse_taxonomy(VALID)).taxonomy


def test_the_tree_walks_children_in_sibling_order_lineages_and_leaves(tiny):
    tree = taxon_tree(tiny)
    assert tree.root.code == "ROOT"
    assert [node.code for node in tree.preorder] == ["ROOT", "AAA", "AA1", "AA2", "BBB"]
    assert [node.code for node in tree.children("ROOT")] == ["AAA", "BBB"]
    assert tree.children("AA1") == ()
    assert tree.parent("AA2").code == "AAA" and tree.parent("ROOT") is None
    assert tree.lineage("AA2") == ("AA2", "AAA", "ROOT")
    assert tree.is_within("AA1", "AAA") and tree.is_within("AAA", "AAA")
    assert not tree.is_within("BBB", "AAA")
    assert [leaf.code for leaf in tree.leaves_under("ROOT")] == ["AA1", "AA2", "BBB"]
    assert [leaf.code for leaf in tree.leaves_under("BBB")] == ["BBB"]
    assert [node.code for node in tree.subtree("AAA")] == ["AAA", "AA1", "AA2"]
    assert [node.code for node in tree.subtree("BBB")] == ["BBB"]
    assert "AA1" in tree and "ZZZ" not in tree
    with pytest.raises(KeyError):
        tree.children("ZZZ")


def test_the_tree_orders_siblings_by_their_order_not_by_id(tiny):
    tiny.nodes.filter(code="AAA").update(order=5)
    tree = taxon_tree(tiny.pk)
    assert [node.code for node in tree.children("ROOT")] == ["BBB", "AAA"]
    assert [node.code for node in tree.preorder] == ["ROOT", "BBB", "AAA", "AA1", "AA2"]
    assert tree.subtree("ROOT") == tree.preorder


def test_a_class_is_in_a_group_when_one_of_its_nodes_or_their_ancestors_is(tiny):
    classes = {
        "AA1": ["AA1"],  # a leaf under the group's AAA
        "AAA": ["AAA"],  # the group's node itself
        "BBB": ["BBB"],  # outside the group
        "MIX": ["BBB", "AA2"],  # a merged class with one node under AAA
        "ELSE": ["ZZZ"],  # a code outside the taxonomy is only itself
    }
    assert classes_in_groups(tiny, classes) == {"first": {"AA1", "AAA", "MIX"}}


# The classes the Shanghai paediatric bone marrow study's text names among its 19 + 1.
SHANGHAI_NAMED = {
    "EOS": "Eosinophil",
    "LYT": "Lymphocyte",
    "LYC": "Lymphoma cell",
    "PMK": "Promegakaryocyte",
    "NBL": "Neuroblastoma cell",
    "PMO": "Promyelocyte",
    "MYB": "Neutrophilic myelocyte",
    "NGB": "Neutrophil, band",
    "NGS": "Neutrophil, segmented",
    "PEB": "Proerythroblast",
    "BNB": "Basophilic normoblast",
    "PNB": "Polychromatic normoblast",
    "ONB": "Orthochromatic normoblast",
    "LBL": "Lymphoblast",
    "MKB": "Megakaryoblast",
    "MON": "Monocyte",
}


def test_the_bone_marrow_tree_holds_every_class_the_study_names_and_merges_the_rest():
    spec = read_taxonomy_file(SHIPPED_DIR / "bone-marrow.yaml")
    nodes = {node.code: node for node in spec.nodes}
    parents = {node.parent for node in spec.nodes}
    leaves = {code for code in nodes if code not in parents}
    for code, name in SHANGHAI_NAMED.items():
        assert code in leaves and nodes[code].name.startswith(name), code
    # 19 classes outside "other": the 16 named and three the text does not name.
    counted = {code for code in leaves if nodes[code].parent != "OTHER"}
    assert len(counted) == 19
    assert counted - set(SHANGHAI_NAMED) == {"MYO", "MMZ", "PLC"}
    # Rare types are recorded as what they are, under OTHER, which a class map merges.
    assert {code for code in leaves if nodes[code].parent == "OTHER"} == {
        "BAS",
        "PLY",
        "MOB",
        "PMC",
        "ORT",
    }
    hotkeys = [node.hotkey for node in spec.nodes if node.hotkey]
    assert len(hotkeys) == len(set(hotkeys)) == len(leaves)
