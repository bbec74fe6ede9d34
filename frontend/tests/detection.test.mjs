// The scan page's detection status line says what the job is doing, in words.
import assert from "node:assert/strict";
import { test } from "node:test";

import { FINISHED, describeJob } from "../static/js/lib/detection.js";

test("a running job shows its tiles, a done one its counts", () => {
  assert.equal(describeJob({ status: "queued" }), "Detection queued…");
  assert.equal(
    describeJob({ status: "running", progress: { tiles_done: 3, tiles: 12 } }),
    "Finding cells… 25 % (3 of 12 tiles)",
  );
  assert.equal(describeJob({ status: "running", progress: {} }), "Finding cells…");
  assert.equal(
    describeJob({ status: "done", detector_version: "nuclei-1", found_count: 19, new_count: 2 }),
    "Done (nuclei-1): 19 cells found, 2 new.",
  );
});

test("a failed or cancelled job gives its reason and ends the polling", () => {
  assert.equal(describeJob({ status: "failed", error: "x.tiff: unreadable" }), "Failed: x.tiff: unreadable");
  assert.match(describeJob({ status: "cancelled", error: "Cancelled by its user." }), /^Cancelled/);
  assert.ok(["done", "failed", "cancelled"].every((status) => FINISHED.has(status)));
  assert.ok(!FINISHED.has("running") && !FINISHED.has("queued"));
});
