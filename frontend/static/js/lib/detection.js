/*
 * The scan page's "Find cells" button (coordinators and admins): starts the leukocyte detector
 * on the scan (the view's `detection.urls.detect`) and keeps a status line on the job until it
 * ends. `describeJob` is plain, for the tests under Node.
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
        ? `Finding cells… ${progress.tiles_done} of ${progress.tiles} tiles`
        : "Finding cells…";
    case "done":
      return `Done (${job.detector_version}): ${job.found_count} cells found, ${job.new_count} new.`;
    case "cancelled":
      return `Cancelled: ${job.error}`;
    default:
      return `Failed: ${job.error}`;
  }
}

/** Wire the button and the status line to the page config's `detection` (absent: nothing). */
export function detectionPanel(config, button, status) {
  if (!config || !button || !status) return;
  const http = pageClient();
  const backoff = new Backoff();

  function show(job) {
    status.textContent = describeJob(job);
    status.dataset.status = job.status;
    button.disabled = !FINISHED.has(job.status);
    if (!FINISHED.has(job.status)) setTimeout(() => poll(job.id), 1000);
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
