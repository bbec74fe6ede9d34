/*
 * The one key map of the annotation screen and the blinded queue: a key means the same thing on
 * every screen that uses it (Backspace is "previous" on both, never "delete"), a screen may leave
 * a key out, and the taxonomy's hotkeys (one lower-case letter or digit, never `x`) give the
 * class on both. Tab is not here: it moves the keyboard focus, as in any page.
 *
 * No DOM: both page scripts ask actionFor() what a keydown means, and build their key help with
 * keyHelp(); frontend/tests/keys.test.mjs checks that no key has two meanings.
 */

/** A screen name, as the help texts below are keyed. */
export const ANNOTATE = "annotate";
export const QUEUE = "queue";

/**
 * Each entry: the KeyboardEvent.key it answers (with `ctrl`: Ctrl or Cmd held), how the help
 * shows it, the action it means, and what that action does on each screen that uses it.
 */
export const KEY_MAP = [
  {
    key: "x", shown: "x", action: "cannot",
    does: { annotate: "cannot classify the selected cell", queue: "cannot classify" },
  },
  {
    key: " ", shown: "Space", action: "next-open",
    does: { annotate: "nearest unlabelled cell", queue: "skip to the next unanswered cell" },
  },
  {
    key: "ArrowRight", shown: "→", action: "next",
    does: { annotate: "next cell in the list", queue: "next cell" },
  },
  {
    key: "ArrowLeft", shown: "←", action: "previous",
    does: { annotate: "previous cell in the list", queue: "previous cell (your answer can be changed)" },
  },
  {
    key: "Backspace", shown: "Backspace", action: "previous",
    does: { annotate: "previous cell in the list", queue: "previous cell (your answer can be changed)" },
  },
  {
    key: "Delete", shown: "Delete", action: "delete",
    does: {
      annotate: "delete the selected cell (Ctrl+Z or the message's Undo brings it back), or reject a proposed one (Ctrl+Z or Undo reject takes that back)",
    },
  },
  {
    key: "z", ctrl: true, shown: "Ctrl+Z", action: "undo",
    does: { annotate: "undo the last label, mark, move, delete or reject" },
  },
  {
    key: "Enter", shown: "Enter", action: "accept",
    does: { annotate: "accept the suggested class, or centre on the selected cell" },
  },
  { key: "/", shown: "/", action: "search", does: { annotate: "search the classes" } },
  { key: "Escape", shown: "Esc", action: "close", does: { annotate: "close the picker" } },
];

/** What the class hotkeys do, first in each screen's help. */
const HOTKEY_HELP = {
  annotate: "label the selected cell (accepting a proposed one), then go to the nearest unlabelled one",
  queue: "answer, then go to the next unanswered cell",
};

// Keys a focused control handles itself (a button's Enter and Space press it).
const CONTROL_KEYS = new Set([" ", "Enter"]);
const CONTROLS = new Set(["BUTTON", "A", "SUMMARY", "SELECT"]);
const TEXT_FIELDS = new Set(["INPUT", "TEXTAREA"]);

function typingIn(target) {
  return Boolean(target && (TEXT_FIELDS.has(target.tagName) || target.isContentEditable));
}

/**
 * What a keydown means on `screen`: {action: "label", leaf} for a class hotkey, {action} for an
 * entry of KEY_MAP, or null when the page should leave the key alone: typing in a text field,
 * Enter or Space on a focused button or link, Tab, Alt, or a key the screen does not use.
 */
export function actionFor(event, screen, taxonomy) {
  const target = event.target;
  if (typingIn(target)) return null;
  if (target && CONTROLS.has(target.tagName) && CONTROL_KEYS.has(event.key)) return null;
  if (event.altKey) return null;
  const ctrl = Boolean(event.ctrlKey || event.metaKey);
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  for (const entry of KEY_MAP) {
    if (entry.key === key && Boolean(entry.ctrl) === ctrl) {
      return entry.does[screen] ? { action: entry.action } : null;
    }
  }
  const leaf = !ctrl && taxonomy ? taxonomy.leafForHotkey(key) : undefined;
  return leaf ? { action: "label", leaf } : null;
}

/** The key help of a screen: [shown keys, what they do] rows, keys of one action together. */
export function keyHelp(screen) {
  const rows = [["class hotkey", HOTKEY_HELP[screen]]];
  const byAction = new Map();
  for (const entry of KEY_MAP) {
    const does = entry.does[screen];
    if (!does) continue;
    if (byAction.has(entry.action)) byAction.get(entry.action)[0] += " / " + entry.shown;
    else byAction.set(entry.action, [entry.shown, does]);
  }
  return rows.concat(Array.from(byAction.values()));
}
