// The Add scans page's rules: which files make one scan, what each upload carries, the progress
// of a scan over its files, and the server's answers in words.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HttpError } from "../static/js/lib/http.js";
import {
  failure,
  formatBytes,
  groupScans,
  registered,
  scanProgress,
  uploadId,
  uploadMetadata,
} from "../static/js/lib/scan-uploads.js";

const file = (name, size = 10) => ({ name, size });

test("loose files are one scan each, a .zip too", () => {
  const scans = groupScans([{ file: file("small.svs") }, { file: file("series.zip"), path: "" }]);
  assert.deepEqual(
    scans.map((scan) => [scan.name, scan.files.map((f) => f.relativePath)]),
    [
      ["small.svs", [""]],
      ["series.zip", [""]],
    ],
  );
});

test("the files of a folder are one scan with their paths, hidden files left out", () => {
  const scans = groupScans([
    { file: file("boxes_0.dcm"), path: "boxes/boxes_0.dcm" },
    { file: file(".DS_Store"), path: "boxes/.DS_Store" },
    { file: file("small.svs"), path: "" },
    { file: file("boxes_1.dcm"), path: "boxes/boxes_1.dcm" },
    { file: file("Slidedat.ini"), path: "slide/slide/Slidedat.ini" },
    { file: file("slide.mrxs"), path: "slide/slide.mrxs" },
  ]);
  assert.deepEqual(
    scans.map((scan) => [scan.name, scan.files.map((f) => f.relativePath)]),
    [
      ["boxes/", ["boxes/boxes_0.dcm", "boxes/boxes_1.dcm"]],
      ["small.svs", [""]],
      ["slide/", ["slide/slide/Slidedat.ini", "slide/slide.mrxs"]],
    ],
  );
});

test("a folder of hidden files only is no scan", () => {
  assert.deepEqual(groupScans([{ file: file(".DS_Store"), path: "x/.DS_Store" }]), []);
});

test("an upload names its file and study, and its folder path when it has one", () => {
  assert.deepEqual(uploadMetadata("munich", { file: file("a.svs"), relativePath: "" }), {
    filename: "a.svs",
    study: "munich",
  });
  assert.deepEqual(uploadMetadata("munich", { file: file("b_0.dcm"), relativePath: "b/b_0.dcm" }), {
    filename: "b_0.dcm",
    study: "munich",
    relative_path: "b/b_0.dcm",
  });
});

test("the upload's id is the last part of its location, absolute or not", () => {
  const id = "0f8fad5b-d9cb-469f-a165-70867728950e";
  assert.equal(uploadId(`/api/v1/uploads/${id}/`), id);
  assert.equal(uploadId(`http://localhost:8000/api/v1/uploads/${id}/`), id);
});

test("a scan's progress sums its files' bytes sent, none counted past a file's size", () => {
  const files = [{ file: file("a", 100) }, { file: file("b", 300) }];
  assert.deepEqual(scanProgress(files, []), { sent: 0, total: 400 });
  assert.deepEqual(scanProgress(files, [100, 50]), { sent: 150, total: 400 });
  assert.deepEqual(scanProgress(files, [120, 300]), { sent: 400, total: 400 });
});

test("201 reads as added, 200 as already known, each with the scan's id", () => {
  assert.deepEqual(registered(201, { id: 7 }), { kind: "added", scan: 7, text: "added as scan 7" });
  assert.deepEqual(registered(200, { id: 3 }), {
    kind: "known",
    scan: 3,
    text: "already known as scan 3",
  });
});

test("a refusal of the registration gives the server's reason", () => {
  const error = new HttpError(400, { detail: "unreadable.svs: the pixels cannot be read." });
  assert.deepEqual(failure(error), {
    kind: "refused",
    text: "refused: unreadable.svs: the pixels cannot be read.",
  });
  const file = new HttpError(400, { file: ["small.svs: corrupt slide."] });
  assert.equal(failure(file).text, "refused: small.svs: corrupt slide.");
  const fields = new HttpError(400, { uploads: ["Not finished."], patient: ["Too long."] });
  assert.equal(failure(fields).text, "refused: Not finished.; patient: Too long.");
});

test("a transfer refused by the server gives its reason; one without an answer can resume", () => {
  const answer = (status, body) => ({
    originalResponse: { getStatus: () => status, getBody: () => body },
  });
  assert.deepEqual(failure(answer(413, '{"detail": "Uploads are limited to 20 GB."}')), {
    kind: "refused",
    text: "refused: Uploads are limited to 20 GB.",
  });
  assert.equal(failure(answer(403, "Forbidden")).text, "refused: Forbidden");
  assert.deepEqual(failure(new Error("tus: failed to upload chunk")), {
    kind: "failed",
    text: "stopped (no connection); try again to resume",
  });
  assert.equal(failure(answer(502, "")).kind, "failed");
  assert.equal(failure(new HttpError(503, null)).text, "stopped (the server answered 503); try again to resume");
});

test("sizes read in B, KB, MB and GB", () => {
  assert.equal(formatBytes(589), "589 B");
  assert.equal(formatBytes(7696), "8 KB");
  assert.equal(formatBytes(5 * 1024 ** 2), "5.0 MB");
  assert.equal(formatBytes(1.5 * 1024 ** 3), "1.5 GB");
});
