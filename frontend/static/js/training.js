// Live progress of unfinished training runs: poll each one, update its bar and its line.
import { urlFor } from "./lib/http.js";
import { pageConfig, pollRows } from "./lib/page.js";

const config = pageConfig("training-config");
const unfinished = (status) => ["queued", "running"].includes(status);

const describe = (p) => {
  if (!p || p.fold === undefined) return "";
  const eta = p.eta_seconds == null ? "" : `, about ${Math.ceil(p.eta_seconds)} s left`;
  const loss = p.loss == null ? "" : `, loss ${p.loss.toFixed(3)}`;
  return `fold ${p.fold_number}/${p.folds}, epoch ${p.epoch}, step ${p.step || 0}/${p.steps || "?"}${loss}${eta}`;
};

pollRows({
  selector: "tr[data-run]",
  isUnfinished: (row) => unfinished(row.dataset.status),
  urlOf: (row) => urlFor(config.urls.run, { id: row.dataset.run }),
  update: (row, run) => {
    row.querySelector("progress").value = (run.progress && run.progress.fraction) || 0;
    row.querySelector(".status").textContent = run.status;
    row.querySelector(".detail").textContent = run.status === "running" ? describe(run.progress) : "";
    if (run.status !== row.dataset.status && !unfinished(run.status)) {
      // Finished: the page shows the report link or the error in its place.
      window.location.reload();
      return false;
    }
    row.dataset.status = run.status;
    return true;
  },
});
