// Reviewing the detector's proposed cells on the annotation screen (lib/scan-annotations.js):
// a hotkey accepts one with its label, Delete rejects it (undo takes that back), "Accept all in
// view" accepts those of a rectangle; against an in-memory API that answers as the proposals
// endpoints do.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient } from "../static/js/lib/http.js";
import { SaveQueue } from "../static/js/lib/save-queue.js";
import { CANNOT, ScanAnnotations, labelCode, nearestUnlabelled } from "../static/js/lib/scan-annotations.js";
import { FakeApi, URLS } from "./fake-api.mjs";

const PROPOSAL_URLS = {
  ...URLS,
  proposals: "/fake/scans/3/proposals/",
  acceptProposal: "/fake/proposals/{id}/accept/",
  rejectProposal: "/fake/proposals/{id}/reject/",
  restoreProposal: "/fake/proposals/{id}/restore/",
  proposal: "/fake/proposals/{id}/",
  acceptInView: "/fake/scans/3/proposals/accept/",
};

function reply(status, body) {
  return { ok: status < 300, status, text: async () => JSON.stringify(body) };
}

/** FakeApi with the scan's proposals: listed while proposed, each decided once (409 after). */
class ProposalApi extends FakeApi {
  constructor(spots) {
    super();
    this.proposals = new Map(spots.map(([x, y], index) => [
      100 + index, { id: 100 + index, x, y, confidence: 0.5 + index / 10, status: "proposed" },
    ]));
  }

  async fetch(url, init) {
    const { pathname } = new URL(url, "http://fake.invalid");
    if (!pathname.includes("proposals")) return super.fetch(url, init);
    this.requests.push(init.method + " " + pathname);
    const body = init.body ? JSON.parse(init.body) : {};
    if (pathname === PROPOSAL_URLS.proposals) {
      const results = [...this.proposals.values()].filter((p) => p.status === "proposed");
      return reply(200, { results, next: null });
    }
    if (pathname === PROPOSAL_URLS.acceptInView) {
      const cells = [];
      for (const p of this.proposals.values()) {
        if (p.status !== "proposed" || p.x < body.x0 || p.x > body.x1 || p.y < body.y0 || p.y > body.y1) continue;
        p.status = "accepted";
        cells.push({ proposal: p.id, cell: this.addCell({ x: p.x, y: p.y, scan: 3 }).id });
      }
      return reply(200, { accepted: cells.length, cells });
    }
    const [, , , id, verb] = pathname.split("/");
    const proposal = this.proposals.get(Number(id));
    if (!verb) return reply(200, proposal);
    if (verb === "restore") {
      if (proposal.status !== "rejected") {
        return reply(409, { detail: `Proposed cell ${id} is ${proposal.status}, not rejected.` });
      }
      proposal.status = "proposed";
      return reply(200, proposal);
    }
    if (proposal.status !== "proposed") {
      return reply(409, { detail: `Proposed cell ${id} was ${proposal.status} already.` });
    }
    if (verb === "reject") {
      proposal.status = "rejected";
      return reply(200, proposal);
    }
    proposal.status = "accepted";
    const cell = this.addCell({ x: proposal.x, y: proposal.y, scan: 3 });
    const label = this.addLabel({
      cell: cell.id, round: 7, node: body.node, cannot_classify: body.cannot_classify,
      seconds_spent: body.seconds_spent,
    });
    this.accepted = { study: body.study, node: body.node };
    return reply(201, { proposal, cell, label });
  }
}

async function screenWith(spots) {
  const api = new ProposalApi(spots);
  const refused = [];
  const queue = new SaveQueue({ onRefused: (error) => refused.push(error.message), sleep: async () => {} });
  const annotations = new ScanAnnotations({
    http: createClient({ csrfToken: "t", fetch: api.fetch }),
    queue, urls: PROPOSAL_URLS, study: "munich", round: 7, scanId: 3,
  });
  await annotations.load();
  return { api, annotations, queue, refused };
}

const byPosition = (annotations, x, y) => [...annotations.cells.values()].find((c) => c.x === x && c.y === y);

test("proposals load beside the cells, after them in the list, and the walk visits them", async () => {
  const { api, annotations } = await screenWith([[50, 50], [500, 500]]);
  api.addCell({ x: 10, y: 10, scan: 3 });
  const again = new ScanAnnotations({
    http: createClient({ fetch: api.fetch }), queue: new SaveQueue({}), urls: PROPOSAL_URLS,
    study: "munich", round: 7, scanId: 3,
  });
  await again.load();
  assert.deepEqual(again.sorted().map((c) => c.proposal ?? "cell"), ["cell", 100, 101]);
  assert.equal(annotations.proposals().length, 2);
  const cell = again.sorted()[0];
  again.label(cell, "LYT", 1);
  assert.equal(nearestUnlabelled(again.cells.values(), cell).proposal, 100);
});

test("a hotkey on a proposal accepts it with that label: it becomes a labelled cell", async () => {
  const { api, annotations, queue } = await screenWith([[50, 50], [500, 500]]);
  const proposed = byPosition(annotations, 50, 50);
  annotations.label(proposed, "MON", 2.5);
  assert.equal(proposed.proposal, null, "a cell on the screen at once");
  assert.equal(labelCode(proposed), "MON");
  await queue.idle();
  assert.deepEqual(api.requests.filter((r) => r.startsWith("POST")), ["POST /fake/proposals/100/accept/"]);
  assert.deepEqual(api.accepted, { study: "munich", node: "MON" });
  assert.equal(api.labelOf(proposed.id).node, "MON");
  assert.equal(proposed.savedLabel.id, api.labelOf(proposed.id).id);
  // Changing its label afterwards is an ordinary label change.
  annotations.label(proposed, CANNOT, 1);
  await queue.idle();
  assert.equal(api.labelOf(proposed.id).cannot_classify, true);
  assert.equal(annotations.proposals().length, 1);
});

test("undo of an accepting label leaves the cell, unlabelled", async () => {
  const { api, annotations, queue } = await screenWith([[50, 50]]);
  const proposed = byPosition(annotations, 50, 50);
  annotations.label(proposed, "MON", 1);
  annotations.undo();
  await queue.idle();
  assert.equal(labelCode(proposed), null);
  assert.ok(api.cells.has(proposed.id));
  assert.equal(api.labelOf(proposed.id), null);
});

test("removing a proposal rejects it; a proposal decided elsewhere is dropped from the screen", async () => {
  const { api, annotations, queue, refused } = await screenWith([[50, 50], [500, 500]]);
  annotations.remove(byPosition(annotations, 50, 50));
  assert.deepEqual(annotations.undoStack.map((step) => step.kind), ["reject"]);
  api.proposals.get(101).status = "rejected"; // someone else, meanwhile
  annotations.label(byPosition(annotations, 500, 500), "LYT", 1);
  await queue.idle();
  assert.equal(api.proposals.get(100).status, "rejected");
  assert.equal(annotations.cells.size, 0);
  assert.deepEqual(refused, ["Proposed cell 101 was rejected already."]);
});

test("undo takes a rejection back: the proposal is proposed again, on the screen and stored", async () => {
  const { api, annotations, queue } = await screenWith([[50, 50], [500, 500]]);
  const rejected = byPosition(annotations, 50, 50);
  annotations.remove(rejected);
  assert.equal(annotations.proposals().length, 1);
  assert.deepEqual(annotations.undo(), { kind: "reject", cell: rejected });
  assert.equal(annotations.proposals().length, 2);
  assert.deepEqual(annotations.rejected, []);
  await queue.idle();
  assert.equal(api.proposals.get(100).status, "proposed");
  assert.deepEqual(api.requests.filter((r) => r.startsWith("POST")), [
    "POST /fake/proposals/100/reject/", "POST /fake/proposals/100/restore/",
  ]);
  // Proposed again, it is decided like any: a hotkey accepts it.
  annotations.label(rejected, "MON", 1);
  await queue.idle();
  assert.equal(api.proposals.get(100).status, "accepted");
});

test("Undo reject brings back the last rejection, past later edits, which stay", async () => {
  const { api, annotations, queue } = await screenWith([[50, 50], [500, 500], [900, 100]]);
  annotations.remove(byPosition(annotations, 50, 50));
  const last = byPosition(annotations, 500, 500);
  annotations.remove(last);
  const cell = annotations.create(20, 20);
  assert.equal(annotations.restoreLastRejected(), last);
  assert.deepEqual(annotations.undoStack.map((step) => step.kind), ["reject", "create"]);
  await queue.idle();
  assert.equal(api.proposals.get(101).status, "proposed");
  assert.equal(api.proposals.get(100).status, "rejected");
  assert.ok(api.cells.has(cell.id));
  assert.equal(annotations.restoreLastRejected().proposal, 100);
  assert.equal(annotations.restoreLastRejected(), null);
  await queue.idle();
  assert.deepEqual([...api.proposals.values()].map((p) => p.status), ["proposed", "proposed", "proposed"]);
});

test("a rejection taken back elsewhere first stays shown; one accepted elsewhere goes", async () => {
  const { api, annotations, queue, refused } = await screenWith([[50, 50], [500, 500]]);
  annotations.remove(byPosition(annotations, 50, 50));
  annotations.remove(byPosition(annotations, 500, 500));
  await queue.idle();
  api.proposals.get(101).status = "proposed"; // restored in another tab
  annotations.restoreLastRejected();
  await queue.idle();
  assert.equal(annotations.proposals().length, 1);
  api.proposals.get(100).status = "accepted"; // restored and accepted by someone else
  annotations.restoreLastRejected();
  await queue.idle();
  assert.deepEqual(annotations.proposals().map((c) => c.proposal), [101]);
  assert.equal(refused.length, 2);
});

test("proposals of a detection finished later are added once, beside those held", async () => {
  const { api, annotations } = await screenWith([[50, 50]]);
  annotations.label(byPosition(annotations, 50, 50), "MON", 1); // accepted, its save still queued
  api.proposals.set(105, { id: 105, x: 700, y: 700, confidence: 0.9, status: "proposed" });
  assert.equal(await annotations.loadProposals(), 1);
  assert.equal(await annotations.loadProposals(), 0);
  assert.deepEqual(annotations.proposals().map((c) => c.proposal), [105]);
});

test("accept all in view makes the proposals inside unlabelled cells, with their new ids", async () => {
  const { api, annotations, queue } = await screenWith([[50, 50], [500, 500], [900, 100]]);
  const shown = annotations.acceptInView({ x0: 0, y0: 0, x1: 600, y1: 600 });
  assert.equal(shown, 2);
  assert.equal(annotations.proposals().length, 1);
  const first = byPosition(annotations, 50, 50);
  annotations.label(first, "LYT", 1); // queued behind the acceptance: labels the new cell
  await queue.idle();
  assert.ok(api.cells.has(first.id) && api.cells.has(byPosition(annotations, 500, 500).id));
  assert.equal(api.labelOf(first.id).node, "LYT");
  assert.equal(labelCode(byPosition(annotations, 500, 500)), null);
  assert.equal(api.proposals.get(102).status, "proposed");
  assert.deepEqual(annotations.sorted().map((c) => c.proposal ?? c.id), [first.id, first.id + 1, 102]);
});
