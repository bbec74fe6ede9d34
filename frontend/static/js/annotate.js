/*
 * The gold-round annotation screen: an OpenSeadragon viewer of one scan, cell markers drawn on a
 * canvas overlay, a label picker driven by the taxonomy's hotkeys, the differential count. The
 * cells, their saves and undo live in lib/scan-annotations.js (no DOM, tested under Node); this
 * file draws them and turns clicks and keys into edits.
 *
 * Markers are drawn on one canvas rather than as OpenSeadragon overlays (one DOM element each):
 * redrawing 2,000 circles per frame on a canvas is cheap, moving 2,000 elements is not.
 */
import { detectionPanel } from "./lib/detection.js";
import { staleState } from "./lib/http.js";
import { ANNOTATE, actionFor } from "./lib/keys.js";
import { noFocusOnMouse, pageClient, pageConfig, showKeyHelp } from "./lib/page.js";
import { countCovered, fits, pickerBox, placePicker } from "./lib/picker-placement.js";
import { SaveQueue } from "./lib/save-queue.js";
import { CANNOT, ScanAnnotations, labelCode, nearestUnlabelled } from "./lib/scan-annotations.js";
import { Taxonomy } from "./lib/taxonomy.js";
import { TileLinkKeeper } from "./lib/tile-links.js";
import { TILE_LOADING } from "./lib/viewer-options.js";

const config = pageConfig("annotate-config");
// A detection followed to its end here: its proposals are drawn at once.
detectionPanel(
  config.detection,
  document.getElementById("find-cells"),
  document.getElementById("detection-status"),
  () => {
    annotations.loadProposals()
      .then((added) => {
        toast(added + " new proposed cell(s) to review.");
        render();
      })
      .catch((error) => toast("Could not load the proposed cells: " + error.message));
  },
);
const scan = config.scan;
const taxonomy = new Taxonomy(config.taxonomy);
const blastCodes = taxonomy.group("blast");

// ---- Saving -----------------------------------------------------------------------------
const statusEl = document.getElementById("save-status");

function showStatus(text, kind) {
  statusEl.textContent = text;
  statusEl.className = "save-status " + kind;
}

const STATUS_TEXT = {
  saved: () => "All changes saved",
  saving: (status) => "Saving… (" + status.pending + ")",
  failed: (status) => "Save failed, retrying in " + status.retryInSeconds + " s",
};

const queue = new SaveQueue({
  onStatus: (status) => showStatus(STATUS_TEXT[status.state](status), status.state),
  // A 409 with the stored state is a change made on a stale copy; one without it says why the
  // change is refused (e.g. another round's answers are tied to this cell).
  onRefused: (error) => toast(staleState(error) ? "Changed by someone else: " + error.message : error.message),
  onSettled: () => render(),
});
const annotations = new ScanAnnotations({
  http: pageClient(),
  queue: queue,
  urls: config.urls,
  study: config.study,
  round: config.round,
  scanId: scan.id,
});

// ---- Selection ----------------------------------------------------------------------------
let selectedKey = null;
let selectedAt = performance.now();

// The leaf a suggestion names, when it names one the taxonomy lets a label take.
function acceptableSuggestion(cell) {
  const node = cell && cell.suggestion && cell.suggestion.node;
  return node && taxonomy.isLeaf(node) ? node : null;
}

function select(key, pan) {
  if (key !== selectedKey) placement = null;
  selectedKey = key;
  selectedAt = performance.now();
  const cell = annotations.cells.get(key);
  if (cell && pan) panTo(cell);
  positionPicker();
}

// ---- Actions ------------------------------------------------------------------------------
function labelSelected(code) {
  clearNotice();
  const cell = annotations.cells.get(selectedKey);
  if (!cell) {
    toast("Select a cell first: click it on the scan.");
    return;
  }
  const seconds = Math.min(3600, (performance.now() - selectedAt) / 1000);
  annotations.label(cell, code, Math.round(seconds * 100) / 100);
  // On to the nearest unlabelled cell; when every cell is labelled the picker closes, so that
  // it does not cover the scan where the next click goes.
  const next = nearestUnlabelled(annotations.cells.values(), cell, skipped);
  select(next ? next.key : null, !!next);
  render();
}

// "Next unlabelled": the nearest unlabelled cell to the selected one (or to the middle of the
// view). The cell left is skipped: the walk comes back to skipped cells when no other is left.
const skipped = new Set();
function nextUnlabelled() {
  const current = annotations.cells.get(selectedKey);
  const from = current || imagePoint(viewer.viewport.getCenter(true), true);
  if (current) skipped.add(current);
  let next = nearestUnlabelled(annotations.cells.values(), from, skipped);
  if (next && skipped.has(next)) {
    skipped.clear(); // every unlabelled cell was skipped once: a new pass
    next = nearestUnlabelled(annotations.cells.values(), from, skipped);
  }
  if (next) select(next.key, true);
  else toast("Every cell is labelled.");
}

function createAt(x, y) {
  clearNotice();
  if (x < 0 || y < 0 || x >= scan.width || y >= scan.height) {
    toast("That point is outside the scan.");
    return;
  }
  const cell = annotations.create(x, y);
  select(cell.key, false);
  render();
}

function deleteSelected() {
  const cell = annotations.cells.get(selectedKey);
  if (!cell) return;
  clearNotice();
  if (cell.proposal != null) {
    rejectSelected(cell);
    return;
  }
  annotations.remove(cell);
  const step = annotations.undoStack[annotations.undoStack.length - 1];
  const next = nearestUnlabelled(annotations.cells.values(), cell, skipped);
  select(next ? next.key : null, !!next);
  render();
  // Undo rather than a confirmation: a dialog per deleted false positive would slow the count,
  // and undo gives the cell back with its label.
  notice((cell.id != null ? "Cell #" + cell.id : "The new cell") + " deleted.", "Undo (Ctrl+Z)", () => {
    if (annotations.undoStack[annotations.undoStack.length - 1] === step) undo();
    else toast("Later changes came after the delete: press Ctrl+Z once per change to undo it.");
  });
}

// A proposal rejected stays rejected (the detector never proposes it again) unless the
// rejection is taken back (Ctrl+Z, or the panel's "Undo reject"); the walk goes on to the
// nearest unlabelled cell or proposal.
function rejectSelected(cell) {
  annotations.remove(cell);
  const next = nearestUnlabelled(annotations.cells.values(), cell, skipped);
  select(next ? next.key : null, !!next);
  render();
  toast("Proposed cell rejected; the detector will not propose it again (Undo reject takes it back).");
}

// The panel's "Undo reject": the last proposal rejected here is proposed again and selected.
function undoReject() {
  clearNotice();
  const cell = annotations.restoreLastRejected();
  if (!cell) {
    toast("No rejection to take back.");
    return;
  }
  select(cell.key, true);
  render();
}

// "Accept all in view": the proposals inside the viewport (clipped to the scan) become
// unlabelled cells, to be labelled one by one with the walk.
function acceptInView() {
  const bounds = viewer.viewport.getBounds(true);
  const topLeft = imagePoint(bounds.getTopLeft(), true);
  const bottomRight = imagePoint(bounds.getBottomRight(), true);
  const view = {
    x0: Math.max(0, topLeft.x),
    y0: Math.max(0, topLeft.y),
    x1: Math.min(scan.width - 1, bottomRight.x),
    y1: Math.min(scan.height - 1, bottomRight.y),
  };
  if (view.x1 < view.x0 || view.y1 < view.y0) {
    toast("The view shows no part of the scan.");
    return;
  }
  clearNotice();
  const count = annotations.acceptInView(view);
  toast(count ? count + " proposed cell(s) accepted as unlabelled cells." : "No proposed cell in view.");
  render();
}

function undo() {
  clearNotice();
  const step = annotations.undo();
  if (!step) {
    toast("Nothing to undo.");
    return;
  }
  if (step.kind === "label" || step.kind === "delete" || step.kind === "reject") select(step.cell.key, true);
  else if (step.kind === "create" && selectedKey === step.cell.key) select(null, false);
  render();
}

// ---- Viewer ---------------------------------------------------------------------------
const viewer = OpenSeadragon({
  id: "viewer",
  prefixUrl: config.urls.osdImages,
  tileSources: config.urls.dzi,
  showNavigator: true,
  navigatorPosition: "BOTTOM_RIGHT",
  maxZoomPixelRatio: 2,
  animationTime: 0.6,
  zoomPerScroll: 1.4,
  gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
  gestureSettingsTouch: { clickToZoom: false },
  showRotationControl: false,
  // The taxonomy's hotkeys are letters; OpenSeadragon's own keys (w/a/s/d, r, f, ...) would
  // pan, rotate and flip the scan under the annotator's hands.
  keyboardNavEnabled: false,
  crossOriginPolicy: false,
  ...TILE_LOADING,
});

// The descriptor's tile link expires: renew it while the scan is open (lib/tile-links.js).
const tileLinks = new TileLinkKeeper({
  fetchLink: () => pageClient().get(config.urls.tileLink),
  apply: (url) => {
    const item = viewer.world.getItemAt(0);
    if (item) item.source.tilesUrl = url;
  },
  onLost: (error) => toast("This scan's tiles are no longer available to you: " + error.message),
});
viewer.addOnceHandler("open", () => tileLinks.start(config.tileLinkSeconds));

const overlay = document.createElement("canvas");
overlay.className = "marker-layer";
viewer.canvas.appendChild(overlay);

// Image -> screen is a scale and an offset (the viewer is never rotated here), so it is
// computed once per frame and applied to every marker with two multiplications.
function transform() {
  const origin = viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
  const unit = viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0));
  return { scale: (unit.x - origin.x) / 1000, dx: origin.x, dy: origin.y };
}

function markerRadius(t) {
  // About a leukocyte's radius (6 um) on screen, kept clickable when zoomed out.
  const radiusPx = scan.mpp ? 6 / scan.mpp : 80;
  return Math.max(6, Math.min(60, radiusPx * t.scale));
}

function colourOf(cell) {
  if (!cell.label) return null;
  if (cell.label.cannot_classify) return "#8a8a8a";
  const node = taxonomy.node(cell.label.node);
  return node ? node.colour : "#8a8a8a";
}

function drawMarkers() {
  const ratio = window.devicePixelRatio || 1;
  const width = viewer.canvas.clientWidth;
  const height = viewer.canvas.clientHeight;
  if (overlay.width !== Math.round(width * ratio) || overlay.height !== Math.round(height * ratio)) {
    overlay.width = Math.round(width * ratio);
    overlay.height = Math.round(height * ratio);
    overlay.style.width = width + "px";
    overlay.style.height = height + "px";
  }
  const ctx = overlay.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  if (!viewer.world.getItemCount()) return;
  const t = transform();
  const r = markerRadius(t);
  const margin = r + 4;
  let selected = null;
  for (const cell of annotations.cells.values()) {
    const sx = cell.x * t.scale + t.dx;
    const sy = cell.y * t.scale + t.dy;
    if (sx < -margin || sy < -margin || sx > width + margin || sy > height + margin) continue;
    if (cell.key === selectedKey) selected = { sx, sy };
    const colour = colourOf(cell);
    ctx.beginPath();
    ctx.arc(sx, sy, r, 0, Math.PI * 2);
    if (cell.proposal != null) {
      drawProposal(ctx, sx, sy, r);
    } else if (colour) {
      ctx.setLineDash([]);
      ctx.lineWidth = 3;
      ctx.strokeStyle = colour;
      ctx.stroke();
      ctx.lineWidth = 1;
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
      ctx.beginPath();
      ctx.arc(sx, sy, r + 2, 0, Math.PI * 2);
      ctx.stroke();
      ctx.beginPath();
      ctx.arc(sx, sy, Math.max(2.5, r * 0.18), 0, Math.PI * 2);
      ctx.fillStyle = colour;
      ctx.fill();
    } else {
      // Unlabelled: a dashed black-and-yellow ring, unlike any label colour.
      ctx.lineWidth = 2.5;
      ctx.setLineDash([5, 4]);
      ctx.strokeStyle = "#111";
      ctx.stroke();
      ctx.lineDashOffset = 4.5;
      ctx.strokeStyle = "#ffd400";
      ctx.stroke();
      ctx.lineDashOffset = 0;
      ctx.setLineDash([]);
    }
  }
  if (selected) {
    ctx.setLineDash([]);
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#ff2d55";
    ctx.beginPath();
    ctx.arc(selected.sx, selected.sy, r + 6, 0, Math.PI * 2);
    ctx.stroke();
  }
}

// A proposed cell: a thin, finely dashed cyan ring on a dark one, a cross in the middle;
// unlike a labelled marker (solid, in the class colour) and an unlabelled one (black-yellow).
const PROPOSAL_COLOUR = "#00d5ff";
function drawProposal(ctx, sx, sy, r) {
  ctx.lineWidth = 1.5;
  ctx.setLineDash([2, 3]);
  ctx.strokeStyle = "#052a33";
  ctx.stroke();
  ctx.lineDashOffset = 2.5;
  ctx.strokeStyle = PROPOSAL_COLOUR;
  ctx.stroke();
  ctx.lineDashOffset = 0;
  ctx.setLineDash([]);
  const arm = Math.max(2, r * 0.2);
  ctx.beginPath();
  ctx.moveTo(sx - arm, sy);
  ctx.lineTo(sx + arm, sy);
  ctx.moveTo(sx, sy - arm);
  ctx.lineTo(sx, sy + arm);
  ctx.lineWidth = 1.5;
  ctx.strokeStyle = PROPOSAL_COLOUR;
  ctx.stroke();
}

let frameRequested = false;
function requestDraw() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(() => {
    frameRequested = false;
    drawMarkers();
    drawScaleBar();
    positionPicker();
  });
}

// The level-0 point of a viewer-element point (or, with `viewport`, of a viewport point).
function imagePoint(position, viewport) {
  const point = viewport
    ? viewer.viewport.viewportToImageCoordinates(position)
    : viewer.viewport.viewerElementToImageCoordinates(position);
  return { x: Math.floor(point.x), y: Math.floor(point.y) };
}

function hitTest(position) {
  const t = transform();
  const r = markerRadius(t) + 3;
  let best = null;
  let bestDistance = r * r;
  for (const cell of annotations.cells.values()) {
    const dx = cell.x * t.scale + t.dx - position.x;
    const dy = cell.y * t.scale + t.dy - position.y;
    const distance = dx * dx + dy * dy;
    if (distance <= bestDistance) {
      best = cell;
      bestDistance = distance;
    }
  }
  return best;
}

function panTo(cell) {
  const point = viewer.viewport.imageToViewportCoordinates(new OpenSeadragon.Point(cell.x, cell.y));
  const bounds = viewer.viewport.getBounds(true);
  const inner = bounds.getCenter();
  const wide = bounds.width * 0.4;
  const high = bounds.height * 0.4;
  if (Math.abs(point.x - inner.x) > wide || Math.abs(point.y - inner.y) > high) {
    viewer.viewport.panTo(point);
  }
}

// The cell gallery opens the viewer at a cell (?at=X,Y in level-0 pixels): zoomed in to half
// the scan's resolution around it, the cell or proposal at that spot selected.
function openAt(text) {
  const match = /^(\d+),(\d+)$/.exec(text || "");
  if (!match) return;
  const x = Number(match[1]);
  const y = Number(match[2]);
  viewer.viewport.zoomTo(viewer.viewport.imageToViewportZoom(0.5), null, true);
  viewer.viewport.panTo(viewer.viewport.imageToViewportCoordinates(new OpenSeadragon.Point(x, y)), true);
  const found = [...annotations.cells.entries()].find(([, cell]) => cell.x === x && cell.y === y);
  if (found) select(found[0], false);
}

let drag = null;
viewer.addHandler("canvas-press", (event) => {
  const hit = hitTest(event.position);
  // A proposal is not dragged: accept it (label it), then move the cell it became.
  drag = hit && hit.proposal == null ? { cell: hit, from: { x: hit.x, y: hit.y }, moved: false } : null;
});
viewer.addHandler("canvas-drag", (event) => {
  if (!drag) return;
  event.preventDefaultAction = true; // move the marker, not the scan
  const point = imagePoint(event.position);
  drag.cell.x = Math.max(0, Math.min(scan.width - 1, point.x));
  drag.cell.y = Math.max(0, Math.min(scan.height - 1, point.y));
  drag.moved = true;
  requestDraw();
});
viewer.addHandler("canvas-release", () => {
  if (drag && drag.moved) {
    const { cell, from } = drag;
    const to = { x: cell.x, y: cell.y };
    cell.x = from.x;
    cell.y = from.y;
    clearNotice();
    annotations.move(cell, to.x, to.y);
    select(cell.key, false);
    render();
  }
});
viewer.addHandler("canvas-click", (event) => {
  event.preventDefaultAction = true;
  if (!event.quick || (drag && drag.moved)) return;
  const hit = hitTest(event.position);
  if (hit) {
    select(hit.key, false);
    render();
    return;
  }
  const point = imagePoint(event.position);
  createAt(point.x, point.y);
});
viewer.addHandler("update-viewport", requestDraw);
viewer.addHandler("resize", requestDraw);
// After a pan or zoom the picker may lie over markers a place nearby would leave free.
viewer.addHandler("animation-finish", () => positionPicker(true));

// ---- Scale bar ------------------------------------------------------------------------
const scaleBar = document.getElementById("scalebar");
function drawScaleBar() {
  if (!scan.mpp || !viewer.world.getItemCount()) {
    scaleBar.hidden = true;
    return;
  }
  const umPerScreenPx = scan.mpp / transform().scale;
  const target = 120 * umPerScreenPx;
  const power = Math.pow(10, Math.floor(Math.log10(target)));
  const nice = [1, 2, 5, 10].map((m) => m * power).filter((v) => v <= target).pop() || power;
  scaleBar.hidden = false;
  scaleBar.querySelector(".bar").style.width = nice / umPerScreenPx + "px";
  const label = nice >= 1000 ? nice / 1000 + " mm" : (nice >= 1 ? nice : nice.toPrecision(1)) + " µm";
  scaleBar.querySelector(".text").textContent = label;
}

// ---- Picker ---------------------------------------------------------------------------
const picker = document.getElementById("picker");
const pickerTree = document.getElementById("picker-tree");
const search = document.getElementById("picker-search");

function buildPicker() {
  const query = search.value.trim().toLowerCase();
  const matches = (n) => !query || n.code.toLowerCase().includes(query) || n.name.toLowerCase().includes(query);
  const fragment = document.createDocumentFragment();
  function leafButton(node) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "leaf";
    button.dataset.code = node.code;
    button.innerHTML = '<span class="swatch"></span><kbd></kbd><span class="code"></span><span class="name"></span>';
    button.querySelector(".swatch").style.background = node.colour || "#999";
    button.querySelector("kbd").textContent = node.hotkey || "";
    button.querySelector(".code").textContent = node.code;
    button.querySelector(".name").textContent = node.name;
    return button;
  }
  function walk(code, depth, into) {
    for (const child of taxonomy.children(code)) {
      if (child.leaf) {
        if (matches(child)) into.appendChild(leafButton(child));
      } else {
        const group = document.createElement("div");
        group.className = "branch depth-" + depth;
        const title = document.createElement("div");
        title.className = "branch-title";
        title.textContent = child.name;
        group.appendChild(title);
        walk(child.code, depth + 1, group);
        if (group.querySelector(".leaf")) into.appendChild(group);
      }
    }
  }
  walk(taxonomy.root.code, 0, fragment);
  pickerTree.replaceChildren(fragment);
}

function positionPicker(recheck) {
  const cell = annotations.cells.get(selectedKey);
  if (!cell || !viewer.world.getItemCount()) {
    picker.hidden = true;
    pickerShownAt = { left: null, top: null };
    return;
  }
  picker.hidden = false;
  const code = labelCode(cell);
  const node = code && code !== CANNOT ? taxonomy.node(code) : null;
  document.getElementById("picker-title").textContent = cell.proposal != null
    ? "Proposed cell · confidence " + cell.confidence.toFixed(2) + " · a hotkey accepts, Delete rejects"
    : "Cell " + (cell.id != null ? "#" + cell.id : "(saving)") + " · " + (node ? node.code + " " + node.name : code || "unlabelled");
  for (const button of pickerTree.querySelectorAll(".leaf")) {
    button.classList.toggle("current", button.dataset.code === code);
  }
  // A trained model's suggestion (pre-annotation), offered while the cell is unlabelled.
  const hint = document.getElementById("picker-suggestion");
  const offered = acceptableSuggestion(cell);
  hint.hidden = !cell.suggestion || Boolean(code);
  if (cell.suggestion && !code) {
    const percent = Math.round(cell.suggestion.probability * 100);
    hint.textContent = "Suggested: " + cell.suggestion.code + " (" + percent + " %)" +
      (offered ? " · Enter accepts" : " · pick the leaf");
  }
  placeBesideCell(cell, recheck);
}

// The place chosen beside the selected cell ({side, shift} of lib/picker-placement.js), kept
// while the view moves so that the picker follows the cell instead of jumping about; chosen
// anew when the selection changes, when it no longer fits in the viewer, or (`recheck`, after
// a pan or zoom) when another place covers fewer markers.
let placement = null;
let pickerMovedAt = 0;
let pickerShownAt = { left: null, top: null };
let pointer = null; // the mouse in viewer-element pixels, null when it is not over the stage

function placeBesideCell(cell, recheck) {
  const t = transform();
  const radius = markerRadius(t);
  const at = { x: cell.x * t.scale + t.dx, y: cell.y * t.scale + t.dy, radius };
  const size = { width: picker.offsetWidth, height: picker.offsetHeight };
  const stage = { width: viewer.element.clientWidth, height: viewer.element.clientHeight };
  const markers = [];
  for (const other of annotations.cells.values()) {
    const x = other.x * t.scale + t.dx;
    const y = other.y * t.scale + t.dy;
    const onStage = x > -radius && y > -radius && x < stage.width + radius && y < stage.height + radius;
    if (other !== cell && onStage) markers.push({ x, y });
  }
  let box = placement ? pickerBox(placement.side, placement.shift, at, size) : null;
  const kept = box && fits(box, stage);
  if (!kept || (recheck && countCovered(box, markers, radius))) {
    const best = placePicker({ cell: at, size, stage, markers, pointer });
    if (!kept || best.covered < countCovered(box, markers, radius)) {
      placement = best;
      box = best.box;
    }
  }
  const left = Math.round(box.left + viewer.element.offsetLeft);
  const top = Math.round(box.top + viewer.element.offsetTop);
  if (left !== pickerShownAt.left || top !== pickerShownAt.top) {
    pickerMovedAt = performance.now();
    pickerShownAt = { left, top };
  }
  picker.style.left = left + "px";
  picker.style.top = top + "px";
}

// Over the picker too (it lies beside the viewer element, in the stage).
const stageEl = viewer.element.parentElement;
stageEl.addEventListener("pointermove", (event) => {
  const area = viewer.element.getBoundingClientRect();
  pointer = { x: event.clientX - area.left, y: event.clientY - area.top };
});
stageEl.addEventListener("pointerleave", () => (pointer = null));

// A button of the picker takes a mouse click only when the press began on the picker, once it
// had stood still for a moment: a press on the slide released over the picker, or a click
// aimed at the slide where the picker has just moved to, labels nothing.
const PICKER_SETTLE_MS = 400;
let pressOnPicker = false;
document.addEventListener("pointerdown", (event) => {
  pressOnPicker = picker.contains(event.target) && performance.now() - pickerMovedAt >= PICKER_SETTLE_MS;
}, true);
noFocusOnMouse(picker);
picker.addEventListener("click", (event) => {
  if (event.detail === 0) return; // pressed with the keyboard (Enter or Space on a focused button)
  if (!pressOnPicker) {
    event.stopPropagation();
    event.preventDefault();
  }
  pressOnPicker = false;
}, true);

pickerTree.addEventListener("click", (event) => {
  const button = event.target.closest(".leaf");
  if (button) labelSelected(button.dataset.code);
});
picker.querySelector("[data-action=cannot]").addEventListener("click", () => labelSelected(CANNOT));
picker.querySelector("[data-action=delete]").addEventListener("click", deleteSelected);
search.addEventListener("input", () => {
  buildPicker();
  positionPicker();
});
search.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    const first = pickerTree.querySelector(".leaf");
    if (first) labelSelected(first.dataset.code);
    search.value = "";
    buildPicker();
    search.blur();
    event.preventDefault();
  } else if (event.key === "Escape") {
    search.value = "";
    buildPicker();
    search.blur();
  }
  event.stopPropagation();
});

// ---- Keyboard -------------------------------------------------------------------------
// What each key does is lib/keys.js's map, shared with the blinded queue; Tab is left to the
// browser, so that the keyboard focus moves through the picker and the cell list.
const ACTIONS = {
  label: (meant) => labelSelected(meant.leaf.code),
  cannot: () => labelSelected(CANNOT),
  next: () => step(+1),
  previous: () => step(-1),
  "next-open": nextUnlabelled,
  delete: deleteSelected,
  undo: undo,
  close: () => select(null, false),
  search: () => search.focus(),
  accept: () => {
    const cell = annotations.cells.get(selectedKey);
    const offered = cell && !labelCode(cell) && acceptableSuggestion(cell);
    if (offered) labelSelected(offered);
    else if (cell) viewer.viewport.panTo(viewer.viewport.imageToViewportCoordinates(cell.x, cell.y));
  },
};

function step(direction) {
  const next = annotations.neighbour(annotations.cells.get(selectedKey), direction);
  if (next) select(next.key, true);
}

document.addEventListener("keydown", (event) => {
  const meant = actionFor(event, ANNOTATE, taxonomy);
  if (!meant) return;
  event.preventDefault();
  ACTIONS[meant.action](meant);
  render();
});

// ---- Side panel -----------------------------------------------------------------------
const countsBody = document.getElementById("counts");
const proposalPanel = document.getElementById("proposals");
const proposalCount = document.getElementById("proposal-count");
const acceptButton = document.getElementById("accept-in-view");
acceptButton.addEventListener("click", acceptInView);
const undoRejectButton = document.getElementById("undo-reject");
undoRejectButton.addEventListener("click", undoReject);
const summary = document.getElementById("summary");
const cellList = document.getElementById("cell-list");

function renderCounts() {
  const counts = new Map();
  let cannot = 0;
  let unlabelled = 0;
  let proposed = 0;
  for (const cell of annotations.cells.values()) {
    if (cell.proposal != null) proposed++;
    else if (!cell.label) unlabelled++;
    else if (cell.label.cannot_classify) cannot++;
    else counts.set(cell.label.node, (counts.get(cell.label.node) || 0) + 1);
  }
  const countable = Array.from(counts.values()).reduce((a, b) => a + b, 0);
  const blasts = Array.from(counts.entries()).filter(([code]) => blastCodes.has(code))
    .reduce((sum, [, n]) => sum + n, 0);
  const pct = (n) => (countable ? (100 * n / countable).toFixed(1) : "–");
  const rows = taxonomy.leaves.map((leaf) => {
    const n = counts.get(leaf.code) || 0;
    return '<tr class="' + (n ? "" : "zero") + '" data-code="' + leaf.code + '">' +
      '<td><span class="swatch" style="background:' + leaf.colour + '"></span>' +
      '<abbr title="' + escapeHtml(leaf.name) + '">' + leaf.code + "</abbr></td>" +
      '<td class="num">' + n + '</td><td class="num">' + pct(n) + "</td></tr>";
  });
  countsBody.innerHTML = rows.join("");
  summary.innerHTML =
    '<div><span class="big" id="blast-percent">' + pct(blasts) + ' %</span> blasts' +
    (blastCodes.size ? "" : " (this taxonomy has no blast group)") + "</div>" +
    "<div>" + countable + " countable · " + cannot + " cannot classify · " + unlabelled + " unlabelled</div>";
  proposalCount.textContent = proposed + " proposed";
  acceptButton.disabled = !proposed;
  const rejected = annotations.rejected.length;
  undoRejectButton.disabled = !rejected;
  undoRejectButton.title = rejected ? rejected + " rejected on this screen; the last one comes back" : "";
  proposalPanel.hidden = !proposed && !rejected && !config.detection;
}

// Each cell is a button, so that Tab reaches it and Enter or Space selects it; the list is
// drawn anew after every change, and the focus goes back to the same cell's button.
function renderList() {
  const list = annotations.sorted();
  const proposals = list.filter((cell) => cell.proposal != null).length;
  document.getElementById("cell-total").textContent = list.length - proposals + " on this scan";
  const focused = cellList.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  cellList.innerHTML = list.map((cell) => {
    const code = labelCode(cell);
    const node = code && code !== CANNOT ? taxonomy.node(code) : null;
    const selected = cell.key === selectedKey;
    const kind = (selected ? "selected" : "") + (cell.proposal != null ? " proposal" : "");
    return '<li class="' + kind.trim() + '"><button type="button" data-key="' + cell.key + '"' +
      (selected ? ' aria-current="true"' : "") + ">" +
      '<span class="swatch" style="background:' + (node ? node.colour : code ? "#8a8a8a" : "transparent") + '"></span>' +
      (cell.proposal != null ? "proposed" : cell.id != null ? "#" + cell.id : "new") + ' <span class="label">' +
      (node ? node.code : code || (cell.proposal != null ? "confidence " + cell.confidence.toFixed(2) : "unlabelled")) +
      "</span></button></li>";
  }).join("");
  const again = focused && cellList.querySelector('button[data-key="' + focused + '"]');
  if (again) again.focus();
}

noFocusOnMouse(cellList);
cellList.addEventListener("click", (event) => {
  const item = event.target.closest("button[data-key]");
  if (!item) return;
  select(Number(item.dataset.key), true);
  render();
});

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function render() {
  renderCounts();
  renderList();
  requestDraw();
}

// ---- Messages ---------------------------------------------------------------------------
const toastEl = document.getElementById("toast");
let toastTimer = null;
function toast(message) {
  toastEl.replaceChildren(message);
  toastEl.classList.remove("notice");
  toastEl.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (toastEl.hidden = true), 6000);
}

// A message about the user's own change, with a button that takes it back.
function notice(message, buttonText, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = buttonText;
  button.addEventListener("click", () => {
    toastEl.hidden = true;
    onClick();
    render();
  });
  toastEl.replaceChildren(message + " ", button);
  toastEl.classList.add("notice");
  toastEl.hidden = false;
  clearTimeout(toastTimer); // it stays until the next change (clearNotice)
}

// A notice's button takes back the change it names, so it goes once a later change is made.
function clearNotice() {
  if (toastEl.classList.contains("notice")) toastEl.hidden = true;
}

window.addEventListener("beforeunload", (event) => {
  if (queue.pending) {
    event.preventDefault();
    event.returnValue = "Some changes are not saved yet.";
  }
});

// ---- Loading what is saved --------------------------------------------------------------
buildPicker();
showKeyHelp(document.getElementById("key-help"), ANNOTATE);
const opened = new Promise((resolve) => viewer.addOnceHandler("open", resolve));
Promise.all([annotations.load(), opened])
  .then(() => {
    openAt(new URLSearchParams(window.location.search).get("at"));
    render();
    queue.reportStatus();
    window.cytomark = {
      viewer, cells: annotations.cells, ready: true, pending: () => queue.pending, redraw: drawMarkers,
      markerRadius: () => markerRadius(transform()),
    };
    document.body.dataset.ready = "true";
  })
  .catch((error) => {
    showStatus("Could not load this scan: " + error.message, "failed");
  });
