// The save queue: changes sent one at a time in order, retried with growing pauses after a lost
// connection or a server error, dropped (with their repair) when the server refuses them.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff, HttpError } from "../static/js/lib/http.js";
import { SaveQueue } from "../static/js/lib/save-queue.js";

/** A queue that records its statuses and refusals and never really waits. */
function recordingQueue(options = {}) {
  const seen = { statuses: [], pauses: [], refused: [], settled: 0 };
  const queue = new SaveQueue({
    onStatus: (status) => seen.statuses.push(status),
    onRefused: (error) => seen.refused.push(error),
    onSettled: () => (seen.settled += 1),
    sleep: async (milliseconds) => seen.pauses.push(milliseconds),
    ...options,
  });
  return { queue, seen };
}

function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

test("changes are sent one at a time, in the order they were made", async () => {
  const { queue } = recordingQueue();
  const log = [];
  const first = deferred();
  queue.add({ run: async () => { log.push("first starts"); await first.promise; log.push("first ends"); } });
  queue.add({ run: async () => log.push("second") });
  queue.add({ run: async () => log.push("third") });
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(log, ["first starts"], "the second waits while the first is on its way");
  assert.equal(queue.pending, 3);
  first.resolve();
  await queue.idle();
  assert.deepEqual(log, ["first starts", "first ends", "second", "third"]);
  assert.equal(queue.pending, 0);
});

test("a change may use what an earlier one learned (a new cell's id)", async () => {
  const { queue } = recordingQueue();
  const cell = { id: null };
  const sent = [];
  queue.add({ run: async () => { await new Promise((r) => setTimeout(r, 5)); cell.id = 42; } });
  queue.add({ run: async () => sent.push(cell.id) });
  await queue.idle();
  assert.deepEqual(sent, [42]);
});

test("a lost connection, a 5xx and a 429 are retried with growing pauses until the change lands", async () => {
  const { queue, seen } = recordingQueue();
  const failures = [new TypeError("Failed to fetch"), new HttpError(503, null), new HttpError(429, null)];
  let attempts = 0;
  const order = [];
  queue.add({
    run: async () => {
      attempts += 1;
      if (failures.length) throw failures.shift();
      order.push("first");
    },
  });
  queue.add({ run: async () => order.push("second") });
  await queue.idle();
  assert.equal(attempts, 4);
  assert.deepEqual(seen.pauses, [1000, 2000, 4000]);
  assert.deepEqual(order, ["first", "second"], "nothing overtakes the change being retried");
  const failed = seen.statuses.filter((s) => s.state === "failed");
  assert.deepEqual(failed.map((s) => s.retryInSeconds), [1, 2, 4]);
  assert.ok(failed.every((s) => s.pending === 2));
  assert.deepEqual(seen.refused, []);
  assert.deepEqual(seen.statuses.at(-1), { state: "saved", pending: 0 });
});

test("after a change lands the next failure waits the first pause again; pauses stop at 30 s", async () => {
  const { queue, seen } = recordingQueue({ backoff: new Backoff({ first: 1000, max: 30000 }) });
  let left = 7;
  queue.add({ run: async () => { if (left-- > 0) throw new TypeError("offline"); } });
  await queue.idle();
  assert.deepEqual(seen.pauses, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  let again = 1;
  queue.add({ run: async () => { if (again-- > 0) throw new HttpError(502, null); } });
  await queue.idle();
  assert.deepEqual(seen.pauses.slice(7), [1000]);
});

test("a refused change is dropped after its repair runs, and the queue goes on", async () => {
  const { queue, seen } = recordingQueue();
  const log = [];
  const refusal = new HttpError(400, { x: ["That point is outside the scan."] });
  queue.add({
    run: async () => { throw refusal; },
    refused: async (error) => log.push("repair: " + error.message),
  });
  queue.add({ run: async () => log.push("next change") });
  await queue.idle();
  assert.deepEqual(log, ["repair: x: That point is outside the scan.", "next change"]);
  assert.deepEqual(seen.refused, [refusal], "the page is told once, after the repair");
  assert.deepEqual(seen.pauses, [], "a refusal is never retried");
  assert.equal(seen.settled, 2);
});

test("a 409 is a refusal, not a failure to retry", async () => {
  const { queue, seen } = recordingQueue();
  let attempts = 0;
  const conflict = new HttpError(409, { detail: "Changed meanwhile.", current: { node: "EOS" } });
  queue.add({ run: async () => { attempts += 1; throw conflict; } });
  await queue.idle();
  assert.equal(attempts, 1);
  assert.deepEqual(seen.refused, [conflict]);
});

test("a repair that fails itself does not stop the queue", async () => {
  const { queue, seen } = recordingQueue();
  const log = [];
  queue.add({
    run: async () => { throw new HttpError(403, { detail: "No." }); },
    refused: async () => { throw new TypeError("offline while reloading"); },
  });
  queue.add({ run: async () => log.push("next change") });
  await queue.idle();
  assert.deepEqual(log, ["next change"]);
  assert.equal(seen.refused.length, 1);
});

test("the status says how many changes wait, and 'saved' when none does", async () => {
  const { queue, seen } = recordingQueue();
  const gate = deferred();
  queue.add({ run: () => gate.promise });
  queue.add({ run: async () => {} });
  assert.deepEqual(seen.statuses, [
    { state: "saving", pending: 1 },
    { state: "saving", pending: 2 },
  ]);
  gate.resolve();
  await queue.idle();
  assert.deepEqual(seen.statuses.slice(2), [
    { state: "saving", pending: 1 },
    { state: "saved", pending: 0 },
    { state: "saved", pending: 0 },
  ]);
});
