/*
 * The gold-round annotation screen: an OpenSeadragon viewer of one scan, cell markers drawn on a
 * canvas overlay, a label picker driven by the taxonomy's hotkeys, the differential count, and a
 * save queue that sends every change to the REST API at once, in order, and retries.
 *
 * Markers are drawn on one canvas rather than as OpenSeadragon overlays (one DOM element each):
 * redrawing 2,000 circles per frame on a canvas is cheap, moving 2,000 elements is not.
 */
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("annotate-config").textContent);
  const csrfToken = document.querySelector("[name=csrfmiddlewaretoken]").value;
  const scan = config.scan;

  // ---- Taxonomy -------------------------------------------------------------------------
  const nodes = new Map(config.taxonomy.nodes.map((n) => [n.code, n]));
  const childrenOf = (code) => config.taxonomy.nodes.filter((n) => n.parent === code);
  // Leaves in the tree's reading order (branch by branch), as the picker and the count show them.
  const leaves = [];
  (function collect(code) {
    for (const child of childrenOf(code)) {
      if (child.leaf) leaves.push(child);
      else collect(child.code);
    }
  })(config.taxonomy.nodes.find((n) => !n.parent).code);
  const byHotkey = new Map(leaves.filter((n) => n.hotkey).map((n) => [n.hotkey, n]));
  const blastCodes = new Set(config.taxonomy.groups.blast || []);
  const CANNOT = "cannot classify";

  // ---- State ----------------------------------------------------------------------------
  let nextLocalKey = 1;
  const cells = new Map(); // local key -> {key, id, x, y, version, label, createdOrder}
  let selectedKey = null;
  let selectedAt = performance.now();
  const undoStack = [];

  function sortedCells() {
    return Array.from(cells.values()).sort((a, b) => a.order - b.order);
  }

  function addCell(fields) {
    const cell = Object.assign({ key: nextLocalKey++, label: null, deleted: false }, fields);
    cell.order = cell.id != null ? cell.id : 1e12 + cell.key;
    cells.set(cell.key, cell);
    return cell;
  }

  // The leaf a suggestion names, when it names one the taxonomy lets a label take.
  function acceptableSuggestion(cell) {
    const node = cell && cell.suggestion && cell.suggestion.node;
    return node && nodes.has(node) && nodes.get(node).leaf ? node : null;
  }

  function labelCode(cell) {
    if (!cell.label) return null;
    return cell.label.cannot_classify ? CANNOT : cell.label.node;
  }

  // ---- Save queue -----------------------------------------------------------------------
  // Operations run one at a time in the order they were made, so a label made on a cell that is
  // still being created waits for the cell's id. Network failures and 5xx are retried with
  // back-off; a 409 (someone changed it first) loads the newer state instead of overwriting it.
  const queue = [];
  let running = false;
  let retryDelay = 1000;
  const statusEl = document.getElementById("save-status");

  function showStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.className = "save-status " + kind;
  }

  function refreshStatus() {
    if (queue.length === 0) showStatus("All changes saved", "saved");
    else showStatus("Saving… (" + queue.length + ")", "saving");
  }

  function enqueue(op) {
    queue.push(op);
    refreshStatus();
    pump();
  }

  class HttpError extends Error {
    constructor(status, body) {
      super(describeError(body) || "HTTP " + status);
      this.status = status;
      this.body = body;
    }
  }

  function describeError(body) {
    if (!body || typeof body !== "object") return "";
    if (body.detail) return body.detail;
    return Object.entries(body)
      .map(([field, problems]) => field + ": " + [].concat(problems).join(" "))
      .join("; ");
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": csrfToken,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = { detail: text.slice(0, 200) };
    }
    if (!response.ok) throw new HttpError(response.status, data);
    return data;
  }

  async function pump() {
    if (running) return;
    running = true;
    while (queue.length) {
      const op = queue[0];
      try {
        await op.run();
        queue.shift();
        retryDelay = 1000;
        refreshStatus();
      } catch (error) {
        const retryable = !(error instanceof HttpError) || error.status >= 500 || error.status === 429;
        if (retryable) {
          showStatus("Save failed, retrying in " + Math.round(retryDelay / 1000) + " s", "failed");
          await new Promise((resolve) => setTimeout(resolve, retryDelay));
          retryDelay = Math.min(retryDelay * 2, 30000);
          continue;
        }
        queue.shift();
        if (op.onRefused) await op.onRefused(error).catch(() => {});
        // A 409 with the stored state is a change made on a stale copy; one without it says why
        // the change is refused (e.g. another round's answers are tied to this cell).
        const stale = error.status === 409 && error.body && error.body.current;
        toast(stale ? "Changed by someone else: " + error.message : error.message);
        refreshStatus();
      }
      render();
    }
    running = false;
    refreshStatus();
  }

  // Reload one cell's saved state after the server refused a change.
  async function reloadCell(cell) {
    if (cell.id == null) {
      cells.delete(cell.key);
      return;
    }
    try {
      const saved = await api("GET", config.urls.cells + cell.id + "/");
      Object.assign(cell, { x: saved.x, y: saved.y, version: saved.version, deleted: false });
      const labels = await api(
        "GET", config.urls.labels + "?cell=" + cell.id + "&round=" + config.round
      );
      cell.label = labels.results.length ? labels.results[0] : null;
    } catch (error) {
      if (error instanceof HttpError && error.status === 404) cells.delete(cell.key);
    }
  }

  function saveCreate(cell) {
    enqueue({
      run: async () => {
        if (cell.deleted) return;
        const saved = await api("POST", config.urls.cells, {
          study: config.study, scan: scan.id, x: cell.x, y: cell.y,
        });
        cell.id = saved.id;
        cell.version = saved.version;
      },
      onRefused: async () => cells.delete(cell.key),
    });
  }

  function saveLabel(cell, code, seconds) {
    enqueue({
      run: async () => {
        if (cell.deleted || cell.id == null) return;
        const answer = code === CANNOT
          ? { node: null, cannot_classify: true }
          : { node: code, cannot_classify: false };
        answer.seconds_spent = seconds;
        if (code === null) {
          if (!cell.savedLabel) return;
          await api("DELETE", config.urls.labels + cell.savedLabel.id + "/?version=" + cell.savedLabel.version);
          cell.savedLabel = null;
          return;
        }
        const saved = cell.savedLabel
          ? await api("PATCH", config.urls.labels + cell.savedLabel.id + "/",
            Object.assign({ version: cell.savedLabel.version }, answer))
          : await api("POST", config.urls.labels,
            Object.assign({ cell: cell.id, round: config.round }, answer));
        // `savedLabel` is the label as the server last confirmed it; the shown label stays the
        // local one when a later change of it is still waiting in the queue.
        cell.savedLabel = saved;
        if (labelCode(cell) === labelCode({ label: saved })) cell.label = saved;
      },
      onRefused: async (error) => {
        if (error.status === 409 && error.body && error.body.current) {
          cell.label = error.body.current;
          cell.savedLabel = cell.label;
        } else {
          await reloadCell(cell);
          cell.savedLabel = cell.label;
        }
      },
    });
  }

  function saveMove(cell, x, y) {
    enqueue({
      run: async () => {
        if (cell.deleted || cell.id == null) return;
        const saved = await api("PATCH", config.urls.cells + cell.id + "/", {
          x: x, y: y, version: cell.version,
        });
        cell.version = saved.version;
      },
      onRefused: async () => reloadCell(cell),
    });
  }

  function saveDelete(cell) {
    enqueue({
      run: async () => {
        if (cell.id == null) return;
        await api("DELETE", config.urls.cells + cell.id + "/?version=" + cell.version);
      },
      onRefused: async () => {
        cell.deleted = false;
        cells.set(cell.key, cell);
        await reloadCell(cell);
      },
    });
  }

  // ---- Actions (each also pushes its undo) ----------------------------------------------
  function applyLabel(cell, code, seconds, recordUndo) {
    const before = labelCode(cell);
    if (recordUndo) undoStack.push({ kind: "label", cell: cell, before: before });
    if (code === null) cell.label = null;
    else cell.label = Object.assign({}, cell.label || {}, code === CANNOT
      ? { node: null, cannot_classify: true }
      : { node: code, cannot_classify: false });
    saveLabel(cell, code, seconds);
  }

  function labelSelected(code) {
    const cell = cells.get(selectedKey);
    if (!cell) {
      toast("Select a cell first: click it on the scan.");
      return;
    }
    const seconds = Math.min(3600, (performance.now() - selectedAt) / 1000);
    applyLabel(cell, code, Math.round(seconds * 100) / 100, true);
    // On to the next unlabelled cell; when every cell is labelled the picker closes, so that
    // it does not cover the scan where the next click goes.
    const next = neighbour(cell, +1, true);
    select(next ? next.key : null, !!next);
    render();
  }

  function createAt(x, y) {
    if (x < 0 || y < 0 || x >= scan.width || y >= scan.height) {
      toast("That point is outside the scan.");
      return;
    }
    const cell = addCell({ id: null, x: x, y: y, version: 1 });
    undoStack.push({ kind: "create", cell: cell });
    saveCreate(cell);
    select(cell.key, false);
    render();
  }

  function deleteSelected() {
    const cell = cells.get(selectedKey);
    if (!cell) return;
    const next = neighbour(cell, +1, false);
    removeCell(cell);
    undoStack.push({ kind: "delete", cell: cell, label: labelCode(cell) });
    select(next && next !== cell ? next.key : null, false);
    render();
  }

  function removeCell(cell) {
    cell.deleted = true;
    cells.delete(cell.key);
    saveDelete(cell);
  }

  function moveCell(cell, x, y, from) {
    undoStack.push({ kind: "move", cell: cell, x: from.x, y: from.y });
    cell.x = x;
    cell.y = y;
    saveMove(cell, x, y);
  }

  function undo() {
    const step = undoStack.pop();
    if (!step) {
      toast("Nothing to undo.");
      return;
    }
    const cell = step.cell;
    if (step.kind === "label") {
      applyLabel(cell, step.before, 0, false);
      select(cell.key, true);
    } else if (step.kind === "create") {
      removeCell(cell);
      if (selectedKey === cell.key) select(null, false);
    } else if (step.kind === "move") {
      cell.x = step.x;
      cell.y = step.y;
      saveMove(cell, step.x, step.y);
    } else if (step.kind === "delete") {
      const again = addCell({ id: null, x: cell.x, y: cell.y, version: 1 });
      saveCreate(again);
      if (step.label) applyLabel(again, step.label, 0, false);
      select(again.key, true);
    }
    render();
  }

  // ---- Selection and navigation -----------------------------------------------------------
  function neighbour(cell, direction, unlabelledOnly) {
    const list = sortedCells();
    if (!list.length) return null;
    const start = cell ? list.indexOf(cell) : -1;
    for (let step = 1; step <= list.length; step++) {
      const index = ((start + direction * step) % list.length + list.length) % list.length;
      const candidate = list[index];
      if (!unlabelledOnly || !candidate.label) {
        if (candidate === cell && unlabelledOnly) return null;
        return candidate;
      }
    }
    return null;
  }

  function select(key, pan) {
    selectedKey = key;
    selectedAt = performance.now();
    const cell = cells.get(key);
    if (cell && pan) panTo(cell);
    positionPicker();
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
  });

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
    const node = nodes.get(cell.label.node);
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
    for (const cell of cells.values()) {
      const sx = cell.x * t.scale + t.dx;
      const sy = cell.y * t.scale + t.dy;
      if (sx < -margin || sy < -margin || sx > width + margin || sy > height + margin) continue;
      if (cell.key === selectedKey) selected = { sx, sy };
      const colour = colourOf(cell);
      ctx.beginPath();
      ctx.arc(sx, sy, r, 0, Math.PI * 2);
      if (colour) {
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

  function imagePoint(position) {
    const point = viewer.viewport.viewerElementToImageCoordinates(position);
    return { x: Math.floor(point.x), y: Math.floor(point.y) };
  }

  function hitTest(position) {
    const t = transform();
    const r = markerRadius(t) + 3;
    let best = null;
    let bestDistance = r * r;
    for (const cell of cells.values()) {
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

  let drag = null;
  viewer.addHandler("canvas-press", (event) => {
    const hit = hitTest(event.position);
    drag = hit ? { cell: hit, from: { x: hit.x, y: hit.y }, moved: false } : null;
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
      moveCell(cell, to.x, to.y, from);
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
    const root = config.taxonomy.nodes.find((n) => !n.parent);
    const children = childrenOf;
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
      for (const child of children(code)) {
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
    walk(root.code, 0, fragment);
    pickerTree.replaceChildren(fragment);
  }

  function positionPicker() {
    const cell = cells.get(selectedKey);
    if (!cell || !viewer.world.getItemCount()) {
      picker.hidden = true;
      return;
    }
    picker.hidden = false;
    const code = labelCode(cell);
    const node = code && code !== CANNOT ? nodes.get(code) : null;
    document.getElementById("picker-title").textContent =
      "Cell " + (cell.id != null ? "#" + cell.id : "(saving)") + " · " + (node ? node.code + " " + node.name : code || "unlabelled");
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
    const t = transform();
    const stage = viewer.element.getBoundingClientRect();
    let left = cell.x * t.scale + t.dx + markerRadius(t) + 16;
    let top = cell.y * t.scale + t.dy - 40;
    if (left + picker.offsetWidth > stage.width - 8) left = cell.x * t.scale + t.dx - markerRadius(t) - 16 - picker.offsetWidth;
    left = Math.max(8, left);
    top = Math.max(8, Math.min(stage.height - picker.offsetHeight - 8, top));
    picker.style.left = left + "px";
    picker.style.top = top + "px";
  }

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
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) return;
    const key = event.key;
    if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z") {
      undo();
    } else if (event.ctrlKey || event.metaKey || event.altKey) {
      return;
    } else if (byHotkey.has(key)) {
      labelSelected(byHotkey.get(key).code);
    } else if (key === "x") {
      labelSelected(CANNOT);
    } else if (key === "ArrowRight" || (key === "Tab" && !event.shiftKey)) {
      const next = neighbour(cells.get(selectedKey), +1, false);
      if (next) select(next.key, true);
    } else if (key === "ArrowLeft" || (key === "Tab" && event.shiftKey)) {
      const previous = neighbour(cells.get(selectedKey), -1, false);
      if (previous) select(previous.key, true);
    } else if (key === " ") {
      const next = neighbour(cells.get(selectedKey), +1, true);
      if (next) select(next.key, true);
      else toast("Every cell is labelled.");
    } else if (key === "Delete" || key === "Backspace") {
      deleteSelected();
    } else if (key === "Escape") {
      select(null, false);
    } else if (key === "/") {
      search.focus();
    } else if (key === "Enter") {
      const cell = cells.get(selectedKey);
      const offered = cell && !labelCode(cell) && acceptableSuggestion(cell);
      if (offered) labelSelected(offered);
      else if (cell) viewer.viewport.panTo(viewer.viewport.imageToViewportCoordinates(cell.x, cell.y));
    } else {
      return;
    }
    event.preventDefault();
    render();
  });

  // ---- Side panel -----------------------------------------------------------------------
  const countsBody = document.getElementById("counts");
  const summary = document.getElementById("summary");
  const cellList = document.getElementById("cell-list");

  function renderCounts() {
    const counts = new Map();
    let cannot = 0;
    let unlabelled = 0;
    for (const cell of cells.values()) {
      if (!cell.label) unlabelled++;
      else if (cell.label.cannot_classify) cannot++;
      else counts.set(cell.label.node, (counts.get(cell.label.node) || 0) + 1);
    }
    const countable = Array.from(counts.values()).reduce((a, b) => a + b, 0);
    const blasts = Array.from(counts.entries()).filter(([code]) => blastCodes.has(code))
      .reduce((sum, [, n]) => sum + n, 0);
    const pct = (n) => (countable ? (100 * n / countable).toFixed(1) : "–");
    const rows = leaves.map((leaf) => {
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
  }

  function renderList() {
    const list = sortedCells();
    document.getElementById("cell-total").textContent = list.length + " on this scan";
    cellList.innerHTML = list.map((cell) => {
      const code = labelCode(cell);
      const node = code && code !== CANNOT ? nodes.get(code) : null;
      return '<li data-key="' + cell.key + '" class="' + (cell.key === selectedKey ? "selected" : "") + '">' +
        '<span class="swatch" style="background:' + (node ? node.colour : code ? "#8a8a8a" : "transparent") + '"></span>' +
        (cell.id != null ? "#" + cell.id : "new") + ' <span class="label">' + (node ? node.code : code || "unlabelled") + "</span></li>";
    }).join("");
  }

  cellList.addEventListener("click", (event) => {
    const item = event.target.closest("li");
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
    toastEl.textContent = message;
    toastEl.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (toastEl.hidden = true), 6000);
  }

  window.addEventListener("beforeunload", (event) => {
    if (queue.length) {
      event.preventDefault();
      event.returnValue = "Some changes are not saved yet.";
    }
  });

  // ---- Loading what is saved --------------------------------------------------------------
  async function fetchAll(url) {
    const items = [];
    while (url) {
      const page = await api("GET", url);
      items.push(...page.results);
      url = page.next;
    }
    return items;
  }

  async function load() {
    const [savedCells, savedLabels] = await Promise.all([
      fetchAll(config.urls.cells + "?scan=" + scan.id + "&study=" + encodeURIComponent(config.study) + "&page_size=5000"),
      fetchAll(config.urls.labels + "?scan=" + scan.id + "&round=" + config.round + "&page_size=5000"),
    ]);
    const labelByCell = new Map(savedLabels.map((label) => [label.cell, label]));
    for (const saved of savedCells) {
      const cell = addCell({ id: saved.id, x: saved.x, y: saved.y, version: saved.version, suggestion: saved.suggestion });
      cell.label = labelByCell.get(saved.id) || null;
      cell.savedLabel = cell.label;
    }
  }

  buildPicker();
  const opened = new Promise((resolve) => viewer.addOnceHandler("open", resolve));
  Promise.all([load(), opened])
    .then(() => {
      render();
      refreshStatus();
      window.cytomark = { viewer, cells, ready: true, pending: () => queue.length, redraw: drawMarkers };
      document.body.dataset.ready = "true";
    })
    .catch((error) => {
      showStatus("Could not load this scan: " + error.message, "failed");
    });
})();
