/*
 * A training run's learning curves as SVG, from the "curves" of its progress (mltasks/tracking.py
 * `Curves`): per fold, the training loss over the epochs (`loss`: [x, loss] points, x in epochs
 * done) and the validation after each epoch (`validation`: {epoch, train_loss, loss, accuracy}).
 * Two panels: the loss (training solid, validation dashed with a point per epoch) and the
 * validation accuracy (a point per epoch). `curvesChart` lays them out as plain data (tested in
 * node); `drawCurves` turns that into SVG elements.
 */

export const FOLD_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
const SVG = "http://www.w3.org/2000/svg";
const MARGIN = { left: 44, right: 10, top: 22, bottom: 28 };

/** The [low, high] of the values, widened where they are all equal; [0, 1] for none. */
export function extent(values) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return [0, 1];
  const low = Math.min(...finite);
  const high = Math.max(...finite);
  if (low === high) return [low - 0.5, high + 0.5];
  return [low, high];
}

/** A linear map from the domain [d0, d1] onto the range [r0, r1]. */
export function scale([d0, d1], [r0, r1]) {
  const ratio = (r1 - r0) / (d1 - d0);
  return (value) => r0 + (value - d0) * ratio;
}

/** About `count` round tick values covering [low, high] (steps of 1, 2 or 5 times a power of ten). */
export function ticks(low, high, count = 4) {
  const raw = (high - low) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const out = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) {
    out.push(Number(value.toPrecision(12)));
  }
  return out;
}

/** The SVG path of a polyline through the points (x, y in data units); "" for none. */
export function pathData(points, sx, sy) {
  return points
    .filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y))
    .map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`)
    .join("");
}

function tickText(value) {
  return String(Number(value.toPrecision(3)));
}

function panel({ title, name, width, height, xDomain, yDomain, series }) {
  const sx = scale(xDomain, [MARGIN.left, width - MARGIN.right]);
  const sy = scale(yDomain, [height - MARGIN.bottom, MARGIN.top]);
  const lines = [];
  const points = [];
  for (const item of series) {
    if (item.line.length > 1) {
      lines.push({ fold: item.fold, colour: item.colour, dashed: item.dashed, d: pathData(item.line, sx, sy) });
    }
    for (const [x, y] of item.points) {
      if (!Number.isFinite(y)) continue;
      points.push({ fold: item.fold, colour: item.colour, cx: sx(x), cy: sy(y), label: `fold ${item.fold}, epoch ${x}: ${item.what} ${y.toFixed(3)}` });
    }
  }
  return {
    name,
    title,
    width,
    height,
    lines,
    points,
    xTicks: ticks(...xDomain, 5).map((value) => ({ x: sx(value), text: tickText(value) })),
    yTicks: ticks(...yDomain, 4).map((value) => ({ y: sy(value), text: tickText(value) })),
    plotArea: { left: MARGIN.left, right: width - MARGIN.right, top: MARGIN.top, bottom: height - MARGIN.bottom },
  };
}

/**
 * The layout of the two panels for `curves` (null or {} when nothing was trained yet: no
 * panels), in pixels of panels `width` x `height`.
 */
export function curvesChart(curves, { width = 340, height = 170 } = {}) {
  const folds = Object.entries(curves || {}).filter(
    ([, curve]) => (curve.loss && curve.loss.length) || (curve.validation && curve.validation.length),
  );
  if (!folds.length) return { panels: [], legend: [] };
  const coloured = folds.map(([fold, curve], index) => ({
    fold,
    colour: FOLD_COLOURS[index % FOLD_COLOURS.length],
    training: curve.loss && curve.loss.length ? curve.loss : (curve.validation || []).map((v) => [v.epoch, v.train_loss]),
    validation: curve.validation || [],
  }));
  const xs = coloured.flatMap((c) => [...c.training.map(([x]) => x), ...c.validation.map((v) => v.epoch)]);
  const xDomain = [0, Math.max(1, ...xs.filter(Number.isFinite))];
  const losses = coloured.flatMap((c) => [...c.training.map(([, y]) => y), ...c.validation.map((v) => v.loss)]);
  const [low, high] = extent(losses);
  const lossPanel = panel({
    title: "Loss (training —, validation - -)",
    name: "loss",
    width,
    height,
    xDomain,
    yDomain: [Math.min(0, low), high],
    series: coloured.flatMap((c) => [
      { fold: c.fold, colour: c.colour, dashed: false, line: c.training, points: [], what: "training loss" },
      {
        fold: c.fold,
        colour: c.colour,
        dashed: true,
        line: c.validation.map((v) => [v.epoch, v.loss]),
        points: c.validation.map((v) => [v.epoch, v.loss]),
        what: "validation loss",
      },
    ]),
  });
  const accuracyPanel = panel({
    title: "Validation accuracy",
    name: "accuracy",
    width,
    height,
    xDomain,
    yDomain: [0, 1],
    series: coloured.map((c) => ({
      fold: c.fold,
      colour: c.colour,
      dashed: false,
      line: c.validation.map((v) => [v.epoch, v.accuracy]),
      points: c.validation.map((v) => [v.epoch, v.accuracy]),
      what: "validation accuracy",
    })),
  });
  return {
    panels: [lossPanel, accuracyPanel],
    legend: coloured.map(({ fold, colour }) => ({ fold, colour })),
  };
}

function element(name, attributes = {}, text = "") {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text) node.textContent = text;
  return node;
}

function drawPanel(layout) {
  const svg = element("svg", {
    class: "curve-panel",
    "data-panel": layout.name,
    viewBox: `0 0 ${layout.width} ${layout.height}`,
    width: layout.width,
    height: layout.height,
    role: "img",
    "aria-label": layout.title,
  });
  const area = layout.plotArea;
  svg.append(element("text", { x: area.left, y: 14, class: "curve-title" }, layout.title));
  for (const tick of layout.yTicks) {
    svg.append(element("line", { x1: area.left, x2: area.right, y1: tick.y, y2: tick.y, class: "curve-grid" }));
    svg.append(element("text", { x: area.left - 4, y: tick.y + 3, "text-anchor": "end", class: "curve-tick" }, tick.text));
  }
  for (const tick of layout.xTicks) {
    svg.append(element("text", { x: tick.x, y: area.bottom + 14, "text-anchor": "middle", class: "curve-tick" }, tick.text));
  }
  svg.append(element("text", { x: area.right, y: area.bottom + 26, "text-anchor": "end", class: "curve-tick" }, "epoch"));
  for (const line of layout.lines) {
    const attributes = { d: line.d, stroke: line.colour, fill: "none", "stroke-width": 1.5, "data-fold": line.fold, class: "curve-line" };
    if (line.dashed) attributes["stroke-dasharray"] = "4 3";
    svg.append(element("path", attributes));
  }
  for (const point of layout.points) {
    const dot = element("circle", { cx: point.cx.toFixed(1), cy: point.cy.toFixed(1), r: 3, fill: point.colour, "data-fold": point.fold, class: "curve-point" });
    dot.append(element("title", {}, point.label));
    svg.append(dot);
  }
  return svg;
}

/** Draw the curves into `container` (its content replaced); hidden while there are none. */
export function drawCurves(container, curves) {
  const chart = curvesChart(curves);
  container.hidden = !chart.panels.length;
  const legend = document.createElement("p");
  legend.className = "curve-legend";
  for (const { fold, colour } of chart.legend) {
    const key = document.createElement("span");
    key.style.color = colour;
    key.textContent = `■ fold ${fold} `;
    legend.append(key);
  }
  container.replaceChildren(...chart.panels.map(drawPanel), ...(chart.legend.length ? [legend] : []));
}
