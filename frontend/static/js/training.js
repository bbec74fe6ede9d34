// Live progress of unfinished training runs: poll each one, update its bar, its line, its
// learning curves and the banner of the run just started.
import { drawCurves } from "./lib/curves.js";
import { urlFor } from "./lib/http.js";
import { pageConfig, pollRows } from "./lib/page.js";
import { runBanner, runDetail } from "./lib/training-run.js";

const config = pageConfig("training-config");
const unfinished = (status) => ["queued", "running"].includes(status);
const banner = document.getElementById("run-banner");

const showBanner = (id, status) => {
  if (banner && banner.dataset.run === String(id)) {
    banner.textContent = runBanner(id, status);
    banner.dataset.status = status;
  }
};

for (const row of document.querySelectorAll("tr[data-run]")) {
  showBanner(row.dataset.run, row.dataset.status);
}

pollRows({
  selector: "tr[data-run]",
  isUnfinished: (row) => unfinished(row.dataset.status),
  urlOf: (row) => urlFor(config.urls.run, { id: row.dataset.run }),
  update: (row, run) => {
    row.querySelector("progress").value = (run.progress && run.progress.fraction) || 0;
    row.querySelector(".status").textContent = run.status;
    row.querySelector(".detail").textContent = run.status === "running" ? runDetail(run.progress) : "";
    drawCurves(row.querySelector(".curves"), run.progress && run.progress.curves);
    showBanner(run.id, run.status);
    if (run.status !== row.dataset.status && !unfinished(run.status)) {
      // Finished: the page shows the report link or the error in its place.
      window.location.reload();
      return false;
    }
    row.dataset.status = run.status;
    return true;
  },
});
