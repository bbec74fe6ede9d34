// The taxonomy walks both screens use: leaves in reading order, hotkeys, branches, groups.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Taxonomy } from "../static/js/lib/taxonomy.js";

// As annotator.views.taxonomy_for_screen sends it: nodes in the file's order.
const TREE = {
  nodes: [
    { code: "WBC", name: "Leukocyte", parent: null, hotkey: "", leaf: false },
    { code: "PHY", name: "Physiological", parent: "WBC", hotkey: "", leaf: false },
    { code: "PAT", name: "Pathological", parent: "WBC", hotkey: "", leaf: false },
    { code: "MYB", name: "Myeloblast", parent: "PAT", hotkey: "b", leaf: true },
    { code: "NGS", name: "Segmented neutrophil", parent: "PHY", hotkey: "n", leaf: true },
    { code: "GRA", name: "Granulocytes", parent: "PHY", hotkey: "", leaf: false },
    { code: "EOS", name: "Eosinophil", parent: "GRA", hotkey: "e", leaf: true },
    { code: "LYT", name: "Lymphocyte", parent: "PHY", hotkey: "l", leaf: true },
    { code: "SMU", name: "Smudge", parent: "WBC", hotkey: "s", leaf: true },
  ],
  groups: { blast: ["MYB"] },
};

test("leaves come branch by branch, depth first, children in the file's order", () => {
  const taxonomy = new Taxonomy(TREE);
  assert.deepEqual(taxonomy.leaves.map((n) => n.code), ["NGS", "EOS", "LYT", "MYB", "SMU"]);
  assert.equal(taxonomy.root.code, "WBC");
  assert.deepEqual(taxonomy.children("PHY").map((n) => n.code), ["NGS", "GRA", "LYT"]);
  assert.deepEqual(taxonomy.children("NGS"), []);
});

test("a hotkey names its leaf; a key that is no hotkey names nothing", () => {
  const taxonomy = new Taxonomy(TREE);
  assert.equal(taxonomy.leafForHotkey("e").code, "EOS");
  assert.equal(taxonomy.leafForHotkey("x"), undefined);
  assert.equal(taxonomy.leafForHotkey(""), undefined);
});

test("a node's branch is its ancestor just below the root", () => {
  const taxonomy = new Taxonomy(TREE);
  const branch = (code) => taxonomy.branchOf(taxonomy.node(code)).code;
  assert.deepEqual(["EOS", "NGS", "MYB", "SMU", "PHY"].map(branch), ["PHY", "PHY", "PAT", "SMU", "PHY"]);
});

test("leaves and groups", () => {
  const taxonomy = new Taxonomy(TREE);
  assert.equal(taxonomy.isLeaf("LYT"), true);
  assert.equal(taxonomy.isLeaf("GRA"), false);
  assert.equal(taxonomy.isLeaf("NOPE"), false);
  assert.deepEqual([...taxonomy.group("blast")], ["MYB"]);
  assert.equal(taxonomy.group("atypical").size, 0);
});
