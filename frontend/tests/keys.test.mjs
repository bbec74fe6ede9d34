// The one key map of the annotation screen and the blinded queue: a key means one thing on every
// screen, never collides with a class hotkey, and is left alone while the user types or presses a
// focused button.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ANNOTATE, KEY_MAP, QUEUE, actionFor, keyHelp } from "../static/js/lib/keys.js";
import { Taxonomy } from "../static/js/lib/taxonomy.js";

const taxonomy = new Taxonomy({
  nodes: [
    { code: "ROOT", name: "cells", parent: null, leaf: false },
    { code: "LYT", name: "Lymphocyte", parent: "ROOT", leaf: true, hotkey: "l", colour: "#111111" },
    { code: "MYB", name: "Myeloblast", parent: "ROOT", leaf: true, hotkey: "1", colour: "#222222" },
  ],
});

const press = (key, extra = {}) => ({ key, target: { tagName: "BODY" }, ...extra });
const meaning = (event, screen) => {
  const meant = actionFor(event, screen, taxonomy);
  return meant && meant.action;
};

test("no key has two meanings: each key (with or without Ctrl) is in the map once", () => {
  const seen = KEY_MAP.map((entry) => (entry.ctrl ? "Ctrl+" : "") + entry.key);
  assert.deepEqual(seen, [...new Set(seen)]);
  for (const screen of [ANNOTATE, QUEUE]) {
    for (const entry of KEY_MAP) {
      const expected = entry.does[screen] ? entry.action : null;
      assert.equal(meaning(press(entry.key, { ctrlKey: Boolean(entry.ctrl) }), screen), expected);
    }
  }
});

test("Backspace goes back on both screens and Delete deletes only on the annotation screen", () => {
  assert.equal(meaning(press("Backspace"), ANNOTATE), "previous");
  assert.equal(meaning(press("Backspace"), QUEUE), "previous");
  assert.equal(meaning(press("ArrowLeft"), QUEUE), "previous");
  assert.equal(meaning(press("Delete"), ANNOTATE), "delete");
  assert.equal(meaning(press("Delete"), QUEUE), null);
  assert.ok(!keyHelp(ANNOTATE).some(([keys, does]) => keys.includes("Backspace") && does.includes("delete")));
});

test("no key of the map can be a class hotkey, except x which is cannot classify everywhere", () => {
  // Hotkeys are one lower-case letter or digit (annotator/taxonomy.py), x reserved.
  const couldBeHotkey = (entry) => !entry.ctrl && /^[a-z0-9]$/.test(entry.key);
  assert.deepEqual(KEY_MAP.filter(couldBeHotkey).map((entry) => [entry.key, entry.action]), [["x", "cannot"]]);
  assert.deepEqual(actionFor(press("l"), QUEUE, taxonomy), { action: "label", leaf: taxonomy.node("LYT") });
  assert.deepEqual(actionFor(press("L"), ANNOTATE, taxonomy), { action: "label", leaf: taxonomy.node("LYT") });
  assert.equal(meaning(press("1"), ANNOTATE), "label");
  assert.equal(meaning(press("l", { ctrlKey: true }), ANNOTATE), null, "Ctrl+L stays the browser's");
});

test("Tab and Shift+Tab are left to the browser, so the keyboard focus moves", () => {
  assert.equal(meaning(press("Tab"), ANNOTATE), null);
  assert.equal(meaning(press("Tab", { shiftKey: true }), ANNOTATE), null);
  assert.equal(meaning(press("Tab"), QUEUE), null);
  assert.ok(!KEY_MAP.some((entry) => entry.key === "Tab"));
});

test("no hotkey fires while the user types in a text field", () => {
  for (const tagName of ["INPUT", "TEXTAREA"]) {
    for (const key of ["l", "x", "Backspace", "Delete", " ", "/"]) {
      assert.equal(meaning(press(key, { target: { tagName } }), ANNOTATE), null, `${key} in ${tagName}`);
    }
  }
  assert.equal(meaning(press("Delete", { target: { tagName: "DIV", isContentEditable: true } }), ANNOTATE), null);
});

test("Enter and Space press a focused button; the class hotkeys still label from there", () => {
  const onButton = { target: { tagName: "BUTTON" } };
  assert.equal(meaning(press("Enter", onButton), ANNOTATE), null);
  assert.equal(meaning(press(" ", onButton), QUEUE), null);
  assert.equal(meaning(press("l", onButton), ANNOTATE), "label");
  assert.equal(meaning(press("Enter"), ANNOTATE), "accept");
});

test("each screen's key help lists its keys, the keys of one action together", () => {
  const annotate = new Map(keyHelp(ANNOTATE));
  assert.equal(annotate.get("← / Backspace"), "previous cell in the list");
  assert.ok(annotate.get("Delete").startsWith("delete the selected cell"));
  assert.equal(annotate.get("Space"), "nearest unlabelled cell");
  const queue = new Map(keyHelp(QUEUE));
  assert.ok(queue.get("← / Backspace").startsWith("previous cell"));
  assert.ok(!queue.has("Delete") && !queue.has("Ctrl+Z"));
  assert.deepEqual([...queue.keys()], ["class hotkey", "x", "Space", "→", "← / Backspace"]);
});
