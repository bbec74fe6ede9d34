/*
 * The studies page: in the scan tables of the studies the user coordinates, each scan's
 * "Find cells" button and the status of its last detection (lib/detection.js), so that a
 * coordinator who does not annotate, and so never opens the viewer, can still start one.
 */
import { detectionPanel } from "./lib/detection.js";
import { urlFor } from "./lib/http.js";
import { pageConfig } from "./lib/page.js";

const config = pageConfig("home-config");
for (const cell of document.querySelectorAll("td.detection[data-scan]")) {
  const scan = cell.dataset.scan;
  detectionPanel(
    {
      last: config.detections[scan] || null,
      urls: { detect: urlFor(config.urls.detect, { id: scan }), job: config.urls.job },
    },
    cell.querySelector(".find-cells"),
    cell.querySelector(".detection-status"),
  );
}
