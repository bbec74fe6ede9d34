/*
 * The Add scans page's rules without the DOM or the network, so that Node tests them: which
 * chosen files make one scan, what each tus upload carries, how far a scan's transfer is, and
 * what the server's answer means in words.
 */
import { HttpError, describeError } from "./http.js";

/**
 * The scans in a choice of files. `entries` are `{ file, path }`, `path` the file's place in a
 * chosen or dropped folder ("boxes/boxes_0.dcm") or "" for a loose file. The files of one
 * top-level folder are one scan (a DICOM series, a MIRAX slide with its folder), each loose file
 * another (a .zip is one scan too); hidden files inside a folder (".DS_Store") are left out.
 * Each scan: `{ name, files: [{ file, relativePath }] }` in the order first seen.
 */
export function groupScans(entries) {
  const scans = [];
  const folders = new Map();
  for (const { file, path = "" } of entries) {
    const parts = path.split("/").filter(Boolean);
    if (parts.length < 2) {
      scans.push({ name: file.name, files: [{ file, relativePath: "" }] });
      continue;
    }
    if (parts.some((part) => part.startsWith("."))) continue;
    let scan = folders.get(parts[0]);
    if (!scan) {
      scan = { name: parts[0] + "/", files: [] };
      folders.set(parts[0], scan);
      scans.push(scan);
    }
    scan.files.push({ file, relativePath: parts.join("/") });
  }
  return scans.filter((scan) => scan.files.length > 0);
}

/** The tus `Upload-Metadata` of one file of a scan: its name, the study, its folder path. */
export function uploadMetadata(study, { file, relativePath }) {
  const metadata = { filename: file.name, study };
  if (relativePath) metadata.relative_path = relativePath;
  return metadata;
}

/** The upload's id: the last part of the `Location` the server gave it (a uuid). */
export function uploadId(location) {
  const parts = new URL(location, "http://host").pathname.split("/").filter(Boolean);
  return parts[parts.length - 1];
}

/** Bytes sent and to send over a scan's files, from the bytes sent of each (by index). */
export function scanProgress(files, sentByFile) {
  let sent = 0;
  let total = 0;
  files.forEach(({ file }, index) => {
    total += file.size;
    sent += Math.min(sentByFile[index] || 0, file.size);
  });
  return { sent, total };
}

/** The registration's answer as `{ kind, scan, text }`: 201 added, 200 already known. */
export function registered(status, scan) {
  if (status === 201) return { kind: "added", scan: scan.id, text: "added as scan " + scan.id };
  return { kind: "known", scan: scan.id, text: "already known as scan " + scan.id };
}

/**
 * What went wrong, as `{ kind, text }`: "refused" when the server answered and refused (its
 * reason), "failed" when no answer came (a lost connection: trying again resumes the transfer).
 * Takes a lib/http.js error or a tus-js-client error (whose `originalResponse` holds the answer).
 */
export function failure(error) {
  let status = 0;
  let reason = "";
  if (error instanceof HttpError) {
    status = error.status;
    reason = reasonOf(error.body) || error.message;
  } else if (error && error.originalResponse) {
    status = error.originalResponse.getStatus();
    reason = reasonOf(error.originalResponse.getBody() || "") || "HTTP " + status;
  }
  if (status >= 400 && status < 500) return { kind: "refused", text: "refused: " + reason };
  const why = status ? "the server answered " + status : "no connection";
  return { kind: "failed", text: "stopped (" + why + "); try again to resume" };
}

// Fields whose problems name the file themselves ("small.svs: corrupt ..."): shown without
// the field's name, which means nothing to the person adding scans.
const FILE_FIELDS = ["file", "path", "uploads", "non_field_errors"];

/** The server's reason in an answer body (parsed or text): DRF's `detail` or its fields. */
function reasonOf(body) {
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      return body.slice(0, 200);
    }
  }
  if (!body || typeof body !== "object" || body.detail) return describeError(body);
  return Object.entries(body)
    .map(([field, problems]) => {
      const text = [].concat(problems).join(" ");
      return FILE_FIELDS.includes(field) ? text : field + ": " + text;
    })
    .join("; ");
}

/** A size for people: bytes, KB, MB or GB (powers of 1024, one decimal from MB). */
export function formatBytes(bytes) {
  if (bytes < 1024) return bytes + " B";
  if (bytes < 1024 ** 2) return Math.round(bytes / 1024) + " KB";
  if (bytes < 1024 ** 3) return (bytes / 1024 ** 2).toFixed(1) + " MB";
  return (bytes / 1024 ** 3).toFixed(1) + " GB";
}
