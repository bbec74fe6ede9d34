// Keep the exports table up to date while exports run: poll each unfinished one.
(function () {
  "use strict";
  const rows = () => document.querySelectorAll("tr[data-export]");
  async function poll() {
    let pending = 0;
    for (const row of rows()) {
      if (["done", "failed", "cancelled"].includes(row.dataset.status)) continue;
      pending += 1;
      const response = await fetch(`/api/v1/exports/${row.dataset.export}/`, { credentials: "same-origin" });
      if (!response.ok) continue;
      const exp = await response.json();
      row.dataset.status = exp.status;
      const bar = row.querySelector("progress");
      bar.max = exp.total || 1;
      bar.value = exp.done;
      row.querySelector(".status").textContent = exp.error ? `${exp.status}: ${exp.error}` : exp.status;
      if (exp.download) {
        row.querySelector(".download").innerHTML = `<a href="${exp.download}">download</a>`;
      }
    }
    if (pending) setTimeout(poll, 1000);
  }
  poll();
})();
