// Live progress of unfinished training runs: poll each one, update its bar and its line.
(function () {
  "use strict";
  const describe = (p) => {
    if (!p || p.fold === undefined) return "";
    const eta = p.eta_seconds == null ? "" : `, about ${Math.ceil(p.eta_seconds)} s left`;
    const loss = p.loss == null ? "" : `, loss ${p.loss.toFixed(3)}`;
    return `fold ${p.fold_number}/${p.folds}, epoch ${p.epoch}, step ${p.step || 0}/${p.steps || "?"}${loss}${eta}`;
  };
  async function poll() {
    let pending = 0;
    for (const row of document.querySelectorAll("tr[data-run]")) {
      if (!["queued", "running"].includes(row.dataset.status)) continue;
      pending += 1;
      const response = await fetch(`/api/v1/training-runs/${row.dataset.run}/`, { credentials: "same-origin" });
      if (!response.ok) continue;
      const run = await response.json();
      row.querySelector("progress").value = (run.progress && run.progress.fraction) || 0;
      row.querySelector(".status").textContent = run.status;
      row.querySelector(".detail").textContent = run.status === "running" ? describe(run.progress) : "";
      if (run.status !== row.dataset.status && !["queued", "running"].includes(run.status)) {
        window.location.reload();
        return;
      }
      row.dataset.status = run.status;
    }
    if (pending) setTimeout(poll, 1000);
  }
  poll();
})();
