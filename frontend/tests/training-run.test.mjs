// The training page's words for a run: the banner follows the state, the line shows the
// server's time-left estimate, or says it is still estimating.
import assert from "node:assert/strict";
import { test } from "node:test";

import { runBanner, runDetail, timeLeft } from "../static/js/lib/training-run.js";

test("the banner names each state of the run", () => {
  const states = ["queued", "running", "done", "failed", "cancelled"];
  const banners = states.map((status) => runBanner(7, status));
  assert.equal(new Set(banners).size, states.length);
  assert.match(runBanner(7, "queued"), /run 7 is queued/);
  assert.match(runBanner(7, "running"), /run 7 is running/);
  assert.doesNotMatch(runBanner(7, "running"), /queued/);
  assert.match(runBanner(7, "failed"), /failed/);
});

test("no estimate yet says estimating, an estimate is rounded up", () => {
  assert.equal(timeLeft(null), "estimating time left…");
  assert.equal(timeLeft(undefined), "estimating time left…");
  assert.equal(timeLeft(41.2), "about 42 s left");
  assert.equal(timeLeft(0), "about 1 s left");
  assert.equal(timeLeft(389), "about 7 min left");
});

test("the progress line of a running run", () => {
  const progress = { fold: "0", fold_number: 1, folds: 2, epoch: 1, step: 3, steps: 8 };
  assert.equal(runDetail(progress), "fold 1/2, epoch 1, step 3/8, estimating time left…");
  assert.equal(
    runDetail({ ...progress, loss: 1.23456, eta_seconds: 58 }),
    "fold 1/2, epoch 1, step 3/8, loss 1.235, about 58 s left",
  );
  assert.equal(runDetail({}), "");
});
