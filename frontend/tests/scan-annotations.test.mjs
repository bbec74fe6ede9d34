// The annotation screen's edits and undo, against an in-memory API: what reaches the server, in
// which order, and what the screen shows after a retry or a refusal.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient, staleState } from "../static/js/lib/http.js";
import { SaveQueue } from "../static/js/lib/save-queue.js";
import { CANNOT, ScanAnnotations, labelCode, nearestUnlabelled } from "../static/js/lib/scan-annotations.js";
import { FakeApi, URLS } from "./fake-api.mjs";

const ROUND = 7;
const SCAN = 3;

/** A screen's state over a fake server; `refused` collects what the page would show. */
function screen(api = new FakeApi()) {
  const refused = [];
  const pauses = [];
  const queue = new SaveQueue({
    onRefused: (error) => refused.push(error),
    sleep: async (milliseconds) => pauses.push(milliseconds),
  });
  const annotations = new ScanAnnotations({
    http: createClient({ csrfToken: "token", fetch: api.fetch }),
    queue,
    urls: URLS,
    study: "munich",
    round: ROUND,
    scanId: SCAN,
  });
  return { api, annotations, queue, refused, pauses };
}

const changes = (api) => api.requests.filter((request) => !request.startsWith("GET"));

test("a cell marked and labelled at once is saved first, then labelled with its new id", async () => {
  const { api, annotations, queue } = screen();
  const cell = annotations.create(100, 200);
  annotations.label(cell, "LYT", 1.5);
  assert.equal(cell.id, null, "the screen labels the cell before the server answers");
  assert.equal(labelCode(cell), "LYT");
  await queue.idle();
  assert.deepEqual(changes(api), ["POST /fake/cells/", "POST /fake/labels/"]);
  const saved = api.labelOf(cell.id);
  assert.deepEqual(
    { cell: saved.cell, round: saved.round, node: saved.node, seconds: saved.seconds_spent },
    { cell: cell.id, round: ROUND, node: "LYT", seconds: 1.5 }
  );
  assert.equal(cell.savedLabel.id, saved.id);
});

test("changes of one label reach the server in the order they were made, each with its version", async () => {
  const { api, annotations, queue } = screen();
  const cell = annotations.create(10, 10);
  annotations.label(cell, "LYT", 1);
  annotations.label(cell, "MON", 1);
  annotations.label(cell, CANNOT, 1);
  await queue.idle();
  const label = api.labelOf(cell.id);
  assert.deepEqual(changes(api), [
    "POST /fake/cells/",
    "POST /fake/labels/",
    `PATCH /fake/labels/${label.id}/`,
    `PATCH /fake/labels/${label.id}/`,
  ]);
  assert.equal(label.version, 3);
  assert.equal(label.cannot_classify, true);
  assert.equal(label.node, null);
  assert.equal(labelCode(cell), CANNOT);
});

test("undo of the last label gives the earlier label back, on the server too", async () => {
  const { api, annotations, queue } = screen();
  const cell = annotations.create(10, 10);
  annotations.label(cell, "LYT", 2);
  annotations.label(cell, "MON", 2);
  await queue.idle();
  const step = annotations.undo();
  assert.deepEqual(step, { kind: "label", cell });
  assert.equal(labelCode(cell), "LYT", "shown at once");
  await queue.idle();
  assert.equal(api.labelOf(cell.id).node, "LYT");
  assert.equal(api.labelOf(cell.id).version, 3);

  // Undo of the first label leaves the cell unlabelled: the label is deleted with its version.
  annotations.undo();
  assert.equal(labelCode(cell), null);
  await queue.idle();
  assert.match(changes(api).at(-1), /^DELETE \/fake\/labels\/\d+\/\?version=3$/);
  assert.equal(api.labelOf(cell.id), null);
  assert.equal(cell.savedLabel, null);
});

test("undo walks back through marking too, and says when nothing is left", async () => {
  const { api, annotations, queue } = screen();
  const cell = annotations.create(10, 10);
  annotations.label(cell, "LYT", 1);
  annotations.undo(); // the label
  const step = annotations.undo(); // the mark
  assert.deepEqual(step, { kind: "create", cell });
  assert.equal(annotations.cells.size, 0);
  assert.equal(annotations.undo(), null);
  await queue.idle();
  assert.equal(api.cells.size, 0, "the cell the server made is deleted again");
  assert.equal(api.labels.size, 0);
});

test("a cell unmarked before the server answered is never labelled there", async () => {
  const { api, annotations, queue } = screen();
  api.failNext({ method: "POST", path: "/fake/cells/", as: 503 });
  const cell = annotations.create(10, 10);
  annotations.label(cell, "LYT", 1);
  annotations.undo();
  annotations.undo();
  await queue.idle();
  assert.equal(api.labels.size, 0);
  assert.equal(api.cells.size, 0);
});

test("undo of a delete makes the cell again where it was, with its label", async () => {
  const { api, annotations, queue } = screen();
  const cell = annotations.create(40, 50);
  annotations.label(cell, "EOS", 1);
  await queue.idle();
  const firstId = cell.id;
  annotations.remove(cell);
  await queue.idle();
  assert.equal(api.cells.size, 0);
  const step = annotations.undo();
  assert.equal(step.kind, "delete");
  assert.notEqual(step.cell, cell, "a new cell stands in its place");
  await queue.idle();
  const [again] = api.cells.values();
  assert.deepEqual({ x: again.x, y: again.y }, { x: 40, y: 50 });
  assert.notEqual(again.id, firstId);
  assert.equal(api.labelOf(again.id).node, "EOS");
  assert.equal(step.cell.id, again.id);
});

test("undo of a move puts the marker back, on the server too", async () => {
  const { api, annotations, queue } = screen();
  const cell = annotations.create(40, 50);
  await queue.idle();
  annotations.move(cell, 90, 95);
  await queue.idle();
  assert.deepEqual([api.cells.get(cell.id).x, api.cells.get(cell.id).version], [90, 2]);
  annotations.undo();
  assert.deepEqual([cell.x, cell.y], [40, 50]);
  await queue.idle();
  const stored = api.cells.get(cell.id);
  assert.deepEqual([stored.x, stored.y, stored.version], [40, 50, 3]);
});

test("a label that failed to send is retried with growing pauses until it lands", async () => {
  const { api, annotations, queue, pauses, refused } = screen();
  const cell = annotations.create(10, 10);
  await queue.idle();
  api.failNext({ method: "POST", path: "/fake/labels/", times: 2, as: "network" });
  annotations.label(cell, "NGS", 1);
  await queue.idle();
  assert.deepEqual(pauses, [1000, 2000]);
  assert.equal(api.labelOf(cell.id).node, "NGS");
  assert.equal(changes(api).filter((r) => r === "POST /fake/labels/").length, 3);
  assert.deepEqual(refused, []);
});

test("a label on a stale copy (409) shows the newer label instead of overwriting it", async () => {
  const api = new FakeApi();
  const saved = api.addCell({ x: 10, y: 10, scan: SCAN });
  const { annotations, queue, refused } = screen(api);
  await annotations.load();
  const [cell] = annotations.cells.values();
  // Meanwhile the same rater labels the cell in another tab.
  api.addLabel({ cell: saved.id, round: ROUND, node: "EOS" });
  annotations.label(cell, "NGS", 1);
  await queue.idle();
  assert.equal(api.labelOf(saved.id).node, "EOS", "the server keeps the newer label");
  assert.equal(labelCode(cell), "EOS", "and the screen shows it");
  assert.equal(cell.savedLabel.node, "EOS");
  assert.equal(refused.length, 1);
  assert.equal(refused[0].status, 409);
  assert.equal(staleState(refused[0]).node, "EOS");

  // The next change is made on the newer copy, and lands.
  annotations.label(cell, "LYT", 1);
  await queue.idle();
  assert.equal(api.labelOf(saved.id).node, "LYT");
});

test("a refused move reloads the cell: the marker goes back to where the server has it", async () => {
  const api = new FakeApi();
  api.addCell({ x: 10, y: 20, scan: SCAN });
  const { annotations, queue, refused } = screen(api);
  await annotations.load();
  const [cell] = annotations.cells.values();
  api.refuseMoves = "This cell cannot be moved: another round answered it.";
  annotations.move(cell, 80, 90);
  assert.deepEqual([cell.x, cell.y], [80, 90]);
  await queue.idle();
  assert.deepEqual([cell.x, cell.y], [10, 20]);
  assert.equal(refused[0].message, "This cell cannot be moved: another round answered it.");
  assert.equal(staleState(refused[0]), null, "a 409 that only says why carries no newer state");
});

test("a refused delete brings the cell back with its saved label", async () => {
  const api = new FakeApi();
  const saved = api.addCell({ x: 10, y: 20, scan: SCAN });
  api.addLabel({ cell: saved.id, round: ROUND, node: "MON" });
  const { annotations, queue } = screen(api);
  await annotations.load();
  const [cell] = annotations.cells.values();
  api.refuseMoves = "This cell cannot be deleted.";
  annotations.remove(cell);
  assert.equal(annotations.cells.size, 0);
  await queue.idle();
  assert.equal(annotations.cells.get(cell.key), cell);
  assert.equal(cell.deleted, false);
  assert.equal(labelCode(cell), "MON");
});

test("a cell the server refuses to make disappears from the screen", async () => {
  const { api, annotations, queue, refused } = screen();
  api.failNext({ method: "POST", path: "/fake/cells/", as: 400 });
  const cell = annotations.create(10, 10);
  annotations.label(cell, "LYT", 1);
  await queue.idle();
  assert.equal(annotations.cells.size, 0);
  assert.equal(api.labels.size, 0, "its label is never sent");
  assert.equal(refused.length, 1);
});

test("loading reads the scan's cells and this round's labels", async () => {
  const api = new FakeApi();
  const first = api.addCell({ x: 1, y: 2, scan: SCAN });
  const second = api.addCell({ x: 3, y: 4, scan: SCAN, suggestion: { node: "LYT", probability: 0.9 } });
  api.addCell({ x: 5, y: 6, scan: SCAN + 1 });
  api.addLabel({ cell: first.id, round: ROUND, node: "NGS" });
  api.addLabel({ cell: second.id, round: ROUND + 1, node: "EOS" });
  const { annotations } = screen(api);
  await annotations.load();
  assert.deepEqual(api.requests.sort(), [
    `GET /fake/cells/?scan=${SCAN}&study=munich&page_size=5000`,
    `GET /fake/labels/?scan=${SCAN}&round=${ROUND}&page_size=5000`,
  ]);
  const cells = annotations.sorted();
  assert.deepEqual(cells.map((c) => [c.id, labelCode(c)]), [[first.id, "NGS"], [second.id, null]]);
  assert.equal(cells[1].suggestion.node, "LYT");
});

test("neighbours step through the list in order and wrap around", () => {
  const { annotations } = screen();
  const [a, b, c] = [1, 2, 3].map((id) => annotations.add({ id, x: id, y: id, version: 1 }));
  assert.equal(annotations.neighbour(a, +1), b);
  assert.equal(annotations.neighbour(a, -1), c);
  assert.equal(annotations.neighbour(c, +1), a);
  assert.equal(annotations.neighbour(null, +1), a, "with nothing selected, the first cell");
  assert.equal(annotations.neighbour(null, -1), c, "or the last");
  const fresh = annotations.create(9, 9);
  assert.equal(annotations.neighbour(c, +1), fresh, "new cells come after saved ones");
});

// Cells at level-0 points across a wide scan, saved in an order unrelated to where they lie.
function scatter(annotations, points) {
  return points.map(([id, x, y]) => annotations.add({ id, x, y, version: 1 }));
}

test("next unlabelled is the nearest unlabelled cell, not the next id across the scan", () => {
  const { annotations } = screen();
  // #51 at the top right, #52 at the top left, #53 and #54 just below #51.
  const [c51, c52, c53, c54] = scatter(annotations, [
    [51, 19800, 200], [52, 150, 180], [53, 19750, 900], [54, 19000, 700],
  ]);
  assert.equal(nearestUnlabelled(annotations.cells.values(), c51), c53);
  c53.label = { node: "LYT", cannot_classify: false };
  assert.equal(nearestUnlabelled(annotations.cells.values(), c51), c54, "labelled cells are passed over");
  c54.label = c53.label;
  assert.equal(nearestUnlabelled(annotations.cells.values(), c51), c52, "the far one comes last");
  c52.label = c53.label;
  assert.equal(nearestUnlabelled(annotations.cells.values(), c51), null, "the cell itself is not next");
  assert.equal(nearestUnlabelled(annotations.cells.values(), { x: 0, y: 0 }), c51, "from a point too");
});

test("cells at the same distance are taken upper first, then left, then older", () => {
  const { annotations } = screen();
  const [below, right, above, left] = scatter(annotations, [
    [1, 500, 600], [2, 600, 500], [3, 500, 400], [4, 400, 500],
  ]);
  const centre = { x: 500, y: 500 };
  assert.equal(nearestUnlabelled(annotations.cells.values(), centre), above);
  above.label = { node: "LYT", cannot_classify: false };
  assert.equal(nearestUnlabelled(annotations.cells.values(), centre), left);
  left.label = above.label;
  assert.equal(nearestUnlabelled(annotations.cells.values(), centre), right);
  right.label = above.label;
  assert.equal(nearestUnlabelled(annotations.cells.values(), centre), below);
  const [older, newer] = scatter(annotations, [[5, 700, 700], [6, 700, 700]]);
  below.label = above.label;
  assert.equal(nearestUnlabelled(annotations.cells.values(), centre), older);
  assert.notEqual(newer, older);
});

test("cells skipped with next unlabelled come after every other unlabelled cell", () => {
  const { annotations } = screen();
  const [a, b, far] = scatter(annotations, [[1, 100, 100], [2, 150, 100], [3, 2000, 2000]]);
  const skipped = new Set([a]);
  assert.equal(nearestUnlabelled(annotations.cells.values(), b, skipped), far, "not back to the skipped one");
  skipped.add(far);
  assert.equal(nearestUnlabelled(annotations.cells.values(), b, skipped), a, "then the skipped, nearest first");
});

test("a walk by next unlabelled visits every cell, each step to the nearest one left", () => {
  const { annotations } = screen();
  const cells = scatter(annotations, [
    [1, 0, 0], [2, 10000, 0], [3, 100, 50], [4, 9900, 80], [5, 300, 0], [6, 5000, 5000],
  ]);
  const visited = [];
  let at = cells[0];
  while (at) {
    visited.push(at.id);
    at.label = { node: "LYT", cannot_classify: false };
    at = nearestUnlabelled(annotations.cells.values(), at);
  }
  assert.deepEqual(visited, [1, 3, 5, 6, 4, 2]);
});
