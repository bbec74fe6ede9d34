import assert from "node:assert/strict";
import { test } from "node:test";

import { HttpError } from "../static/js/lib/http.js";
import { RETRY_MS, TileLinkKeeper, refreshDelayMs } from "../static/js/lib/tile-links.js";

function keeper(answers) {
  const planned = [];
  const applied = [];
  const lost = [];
  const k = new TileLinkKeeper({
    fetchLink: async () => {
      const next = answers.shift();
      if (next instanceof Error) throw next;
      return next;
    },
    apply: (url) => applied.push(url),
    onLost: (error) => lost.push(error.status),
    schedule: (run, ms) => planned.push({ run, ms }),
  });
  return { k, planned, applied, lost };
}

test("a link is renewed before it expires and the new base is applied", async () => {
  const { k, planned, applied } = keeper([{ tiles_url: "/tiles/2/", expires_in: 1000 }]);
  k.start(3600);
  assert.equal(planned[0].ms, refreshDelayMs(3600));
  assert.ok(planned[0].ms < 3600 * 1000);
  await planned[0].run();
  assert.deepEqual(applied, ["/tiles/2/"]);
  assert.equal(planned[1].ms, 600_000);
});

test("a refusal stops the renewal and is reported; nothing is applied", async () => {
  const { k, planned, applied, lost } = keeper([new HttpError(404, { detail: "No scan 3" })]);
  k.start(10);
  await planned[0].run();
  assert.deepEqual(lost, [404]);
  assert.deepEqual(applied, []);
  assert.equal(planned.length, 1);
});

test("a network failure or a server error is tried again later", async () => {
  const { k, planned, applied } = keeper([
    new TypeError("Failed to fetch"),
    new HttpError(503, {}),
    { tiles_url: "/tiles/3/", expires_in: 100 },
  ]);
  k.start(10);
  await planned[0].run();
  assert.equal(planned[1].ms, RETRY_MS);
  await planned[1].run();
  assert.equal(planned[2].ms, RETRY_MS);
  await planned[2].run();
  assert.deepEqual(applied, ["/tiles/3/"]);
});

test("links are never refreshed more often than every five seconds", () => {
  assert.equal(refreshDelayMs(0), 5000);
  assert.equal(refreshDelayMs(2), 5000);
});
