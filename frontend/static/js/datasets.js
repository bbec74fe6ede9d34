// Keep the exports table up to date while exports run: poll each unfinished one.
import { urlFor } from "./lib/http.js";
import { pageConfig, pollRows } from "./lib/page.js";

const config = pageConfig("datasets-config");

pollRows({
  selector: "tr[data-export]",
  isUnfinished: (row) => !["done", "failed", "cancelled"].includes(row.dataset.status),
  urlOf: (row) => urlFor(config.urls.export, { id: row.dataset.export }),
  update: (row, exp) => {
    row.dataset.status = exp.status;
    const bar = row.querySelector("progress");
    bar.max = exp.total || 1;
    bar.value = exp.done;
    row.querySelector(".status").textContent = exp.error ? `${exp.status}: ${exp.error}` : exp.status;
    if (exp.download) {
      const link = document.createElement("a");
      link.href = exp.download;
      link.textContent = "download";
      row.querySelector(".download").replaceChildren(link);
    }
    return true;
  },
});
