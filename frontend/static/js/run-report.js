// A run's report page: its learning curves, from the curves the view put on the page.
import { drawCurves } from "./lib/curves.js";
import { pageConfig } from "./lib/page.js";

drawCurves(document.getElementById("run-curves"), pageConfig("run-curves-data"));
