/*
 * A "Find cells" button (coordinators and admins; the scan page's and each scan's on the
 * studies page): starts the leukocyte detector on the scan (`urls.detect`) and keeps a status
 * line on the job until it ends. `describeJob` is plain, for the tests under Node.
 */
import { Backoff, isRetryable, urlFor } from "./http.js";
import { pageClient } from "./page.js";

export const FINISHED = new Set(["done", "failed", "cancelled"]);

/** One sentence on a detection job's state. */
export function describeJob(job) {
  const progress = job.progress || {};
  switch (job.status) {
    case "queued":
      return "Detection queued…";
    case "running":
      return progress.tiles
        ? `Finding cells… ${Math.floor((100 * progress.tiles_done) / progress.tiles)} % ` +
            `(${progress.tiles_done} of ${progress.tiles} tiles)`
        : "Finding cells…";
    case "done":
      return `Done (${job.detector_version}): ${job.found_count} cells found, ${job.new_count} new.`;
    case "cancelled":
      return `Cancelled: ${job.error}`;
    default:
      return `Failed: ${job.error}`;
  }
}

/**
 * Wire the button and the status line to a config {last, urls: {detect, job}} (absent:
 * nothing). `onDone(job)` is called when a job followed here ends done (not for the job the
 * page was loaded with).
 */
export function detectionPanel(config, button, status, onDone = null) {
  if (!config || !button || !status) return;
  const http = pageClient();
  const backoff = new Backoff();
  let followed = false;

  function show(job) {
    status.textContent = describeJob(job);
    status.dataset.status = job.status;
    button.disabled = !FINISHED.has(job.status);
    if (!FINISHED.has(job.status)) {
      followed = true;
      setTimeout(() => poll(job.id), 1000);
    } else if (followed && job.status === "done" && onDone) {
      followed = false;
      onDone(job);
    }
  }

  async function poll(id) {
    try {
      show(await http.get(urlFor(config.urls.job, { id })));
      backoff.reset();
    } catch (error) {
      if (isRetryable(error)) setTimeout(() => poll(id), backoff.next());
      else status.textContent = error.message;
    }
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = "Starting detection…";
    try {
      show(await http.post(config.urls.detect, {}));
    } catch (error) {
      status.textContent = error.message;
      button.disabled = false;
    }
  });

  if (config.last) show(config.last);
}
