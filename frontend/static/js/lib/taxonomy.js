/*
 * A taxonomy as the views send it (annotator.views.taxonomy_for_screen: nodes with code, name,
 * parent, colour, hotkey and leaf, in the file's order, and the groups' leaf codes), with the
 * walks the screens share: children in order, leaves in reading order, hotkeys, branches.
 */

export class Taxonomy {
  constructor({ nodes, groups = {} }) {
    this.nodes = nodes;
    this.byCode = new Map(nodes.map((node) => [node.code, node]));
    this.childrenByParent = new Map();
    for (const node of nodes) {
      const parent = node.parent || null;
      if (!this.childrenByParent.has(parent)) this.childrenByParent.set(parent, []);
      this.childrenByParent.get(parent).push(node);
    }
    this.groups = groups;
    // Leaves in the tree's reading order (depth first, branch by branch), as the pickers and
    // the differential count show them.
    this.leaves = [];
    const visit = (node) => {
      if (node.leaf) this.leaves.push(node);
      for (const child of this.children(node.code)) visit(child);
    };
    for (const root of this.children(null)) visit(root);
    this.leafByHotkey = new Map(this.leaves.filter((n) => n.hotkey).map((n) => [n.hotkey, n]));
  }

  /** The node of a code, or undefined. */
  node(code) {
    return this.byCode.get(code);
  }

  /** The children of a node (null: the roots), in the file's order. */
  children(code) {
    return this.childrenByParent.get(code) || [];
  }

  /** The tree's root (the first, where a file had several). */
  get root() {
    return this.children(null)[0];
  }

  isLeaf(code) {
    const node = this.byCode.get(code);
    return Boolean(node && node.leaf);
  }

  /** The leaf whose hotkey is `key` (hotkeys are one lowercase letter or digit), or undefined. */
  leafForHotkey(key) {
    return this.leafByHotkey.get(key);
  }

  /** The top branch a node lies in: its ancestor (or itself) just below the root. */
  branchOf(node) {
    let current = node;
    while (current.parent && this.byCode.get(current.parent).parent) {
      current = this.byCode.get(current.parent);
    }
    return current;
  }

  /** The leaf codes of a named group (e.g. "blast"); empty when the taxonomy has none. */
  group(name) {
    return new Set(this.groups[name] || []);
  }
}
