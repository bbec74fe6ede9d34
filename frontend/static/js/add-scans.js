/*
 * The Add scans page: files, folders and .zip files chosen or dropped become rows, one per scan,
 * each with its patient code and cohort (the defaults above, or edited by hand before it starts).
 * Upload sends each file by the tus protocol (tus-js-client, a classic script that defines
 * `tus`) in chunks of the size the server takes, showing the bytes sent; a lost connection is
 * retried and resumes from the server's offset, and after the last retry the row says so and
 * offers to try again. Then the scan is registered from its uploads and the row says what
 * became of it: added or already known (with a link to the viewer), or refused with the reason.
 */
import { urlFor } from "./lib/http.js";
import { pageClient, pageConfig } from "./lib/page.js";
import {
  failure,
  formatBytes,
  groupScans,
  registered,
  scanProgress,
  uploadId,
  uploadMetadata,
} from "./lib/scan-uploads.js";

const config = pageConfig("add-scans-config");
const http = pageClient();
const csrfToken = document.querySelector("[name=csrfmiddlewaretoken]").value;
// Scans transferred at once; the others wait their turn.
const PARALLEL = 2;

const table = document.getElementById("uploads");
const startButton = document.getElementById("start");
const summary = document.getElementById("summary");
const defaults = {
  patient: document.getElementById("default-patient"),
  cohort: document.getElementById("default-cohort"),
};
const items = [];

function addEntries(entries) {
  for (const scan of groupScans(entries)) items.push(newItem(scan));
  table.hidden = items.length === 0;
  refreshSummary();
}

function newItem(scan) {
  const row = document.createElement("tr");
  const size = scan.files.reduce((sum, { file }) => sum + file.size, 0);
  const count = scan.files.length > 1 ? ` (${scan.files.length} files)` : "";
  row.innerHTML = `
    <td class="name"></td><td class="size"></td>
    <td><input class="patient" maxlength="64" autocomplete="off"></td>
    <td><input class="cohort" maxlength="64" autocomplete="off"></td>
    <td class="transfer"><progress max="1" value="0"></progress> <span class="percent">0%</span></td>
    <td class="outcome">waiting</td>
    <td><button type="button" class="remove">Remove</button><button type="button" class="retry" hidden>Try again</button></td>`;
  row.querySelector(".name").textContent = scan.name + count;
  row.querySelector(".size").textContent = formatBytes(size);
  const item = { scan, row, state: "queued", uploads: [], sent: [], ids: [], edited: new Set() };
  for (const field of ["patient", "cohort"]) {
    const input = row.querySelector("." + field);
    input.value = defaults[field].value;
    input.addEventListener("input", () => item.edited.add(field));
  }
  row.querySelector(".remove").addEventListener("click", () => {
    items.splice(items.indexOf(item), 1);
    row.remove();
    table.hidden = items.length === 0;
    refreshSummary();
  });
  row.querySelector(".retry").addEventListener("click", () => run([item]));
  setState(item, "queued", "waiting");
  table.tBodies[0].append(row);
  return item;
}

function setState(item, state, text) {
  item.state = state;
  item.row.dataset.state = state;
  item.row.querySelector(".outcome").textContent = text;
  item.row.querySelector(".retry").hidden = state !== "failed";
  item.row.querySelector(".remove").hidden = state !== "queued";
  for (const input of item.row.querySelectorAll("input")) input.disabled = state !== "queued";
  refreshSummary();
}

function showProgress(item) {
  const { sent, total } = scanProgress(item.scan.files, item.sent);
  const bar = item.row.querySelector("progress");
  bar.setAttribute("max", String(total || 1));
  bar.setAttribute("value", String(sent));
  const percent = total ? Math.floor((100 * sent) / total) : 100;
  item.row.querySelector(".percent").textContent = percent + "%";
}

function refreshSummary() {
  const queued = items.filter((item) => item.state === "queued").length;
  startButton.disabled = queued === 0;
  const counts = {};
  for (const item of items) counts[item.state] = (counts[item.state] || 0) + 1;
  summary.textContent = Object.entries(counts)
    .map(([state, n]) => `${n} ${state}`)
    .join(" · ");
}

/** Send one file of the item by tus; resolves when the server has all of it. */
function transfer(item, index) {
  return new Promise((resolve, reject) => {
    item.pending = { resolve, reject };
    let upload = item.uploads[index];
    if (!upload) {
      const part = item.scan.files[index];
      upload = new globalThis.tus.Upload(part.file, {
        endpoint: config.urls.uploads,
        chunkSize: config.chunkSize,
        retryDelays: config.retryDelays,
        metadata: uploadMetadata(config.study, part),
        headers: { "X-CSRFToken": csrfToken },
        storeFingerprintForResuming: false,
        onProgress: (sent) => {
          item.sent[index] = sent;
          showProgress(item);
        },
        onSuccess: () => item.pending.resolve(),
        onError: (error) => item.pending.reject(error),
      });
      item.uploads[index] = upload;
    }
    upload.start();
  });
}

async function upload(item) {
  setState(item, "uploading", "uploading");
  try {
    for (let index = 0; index < item.scan.files.length; index += 1) {
      if (item.ids[index]) continue;
      await transfer(item, index);
      item.ids[index] = uploadId(item.uploads[index].url);
    }
    setState(item, "checking", "checking");
    const answer = await http.exchange("POST", config.urls.scans, {
      study: config.study,
      patient: item.row.querySelector(".patient").value.trim(),
      cohort: item.row.querySelector(".cohort").value.trim(),
      uploads: item.ids,
    });
    const outcome = registered(answer.status, answer.data);
    if (!config.canOpenViewer) {
      setState(item, outcome.kind, outcome.text);
      return;
    }
    setState(item, outcome.kind, "");
    const link = document.createElement("a");
    link.href = urlFor(config.urls.annotate, { id: outcome.scan });
    link.textContent = outcome.text;
    item.row.querySelector(".outcome").append(link);
  } catch (error) {
    const outcome = failure(error);
    setState(item, outcome.kind, outcome.text);
  }
}

async function run(batch) {
  for (const item of batch) setState(item, "waiting", "waiting for its turn");
  const queue = [...batch];
  const worker = async () => {
    while (queue.length) await upload(queue.shift());
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
}

/** The files under dropped folders with their paths; a dropped file's path is "". */
async function droppedEntries(dataTransfer) {
  const roots = [...dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry());
  if (roots.length === 0 || roots.some((entry) => !entry)) {
    return [...dataTransfer.files].map((file) => ({ file, path: "" }));
  }
  const found = [];
  for (const entry of roots) await walk(entry, found);
  return found;
}

async function walk(entry, found) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    const path = entry.fullPath.replace(/^\//, "");
    found.push({ file, path: path.includes("/") ? path : "" });
    return;
  }
  const reader = entry.createReader();
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (batch.length === 0) return;
    for (const child of batch) await walk(child, found);
  }
}

for (const field of ["patient", "cohort"]) {
  defaults[field].addEventListener("input", () => {
    for (const item of items) {
      if (item.state === "queued" && !item.edited.has(field)) {
        item.row.querySelector("." + field).value = defaults[field].value;
      }
    }
  });
}

document.getElementById("pick-files").addEventListener("change", (event) => {
  addEntries([...event.target.files].map((file) => ({ file, path: "" })));
  event.target.value = "";
});

document.getElementById("pick-folder").addEventListener("change", (event) => {
  addEntries([...event.target.files].map((file) => ({ file, path: file.webkitRelativePath })));
  event.target.value = "";
});

const dropZone = document.getElementById("drop-zone");
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("over");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
// The pickers' inputs are hidden behind their labels; the labels take the keyboard.
for (const label of document.querySelectorAll(".picker")) {
  label.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      label.querySelector("input").click();
    }
  });
}
dropZone.addEventListener("drop", async (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  addEntries(await droppedEntries(event.dataTransfer));
});

startButton.addEventListener("click", () => run(items.filter((item) => item.state === "queued")));

// Leaving the page stops its transfers: the browser asks first while any is under way.
window.addEventListener("beforeunload", (event) => {
  if (items.some((item) => ["waiting", "uploading", "checking"].includes(item.state))) {
    event.preventDefault();
  }
});
