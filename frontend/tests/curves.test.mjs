// The learning curves of a training run (static/js/lib/curves.js): the layout of the loss and
// validation-accuracy panels from the curves a run's progress keeps, before any DOM.
import assert from "node:assert/strict";
import { test } from "node:test";

import { curvesChart, extent, pathData, scale, ticks } from "../static/js/lib/curves.js";

const CURVES = {
  0: {
    loss: [[0.5, 2.0], [1.0, 1.6], [1.5, 1.3], [2.0, 1.1]],
    validation: [
      { epoch: 1, train_loss: 1.8, loss: 1.7, accuracy: 0.4 },
      { epoch: 2, train_loss: 1.2, loss: 1.4, accuracy: 0.6 },
    ],
  },
  1: { loss: [[0.5, 2.2]], validation: [] },
};

test("scales, extents and round ticks", () => {
  const x = scale([0, 2], [10, 110]);
  assert.equal(x(0), 10);
  assert.equal(x(1), 60);
  assert.equal(x(2), 110);
  assert.deepEqual(extent([3, 1, 2, NaN]), [1, 3]);
  assert.deepEqual(extent([2, 2]), [1.5, 2.5]);
  assert.deepEqual(extent([]), [0, 1]);
  assert.deepEqual(ticks(0, 1, 4), [0, 0.5, 1]);
  assert.deepEqual(ticks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(ticks(0.3, 2.2, 4), [0.5, 1, 1.5, 2]);
  assert.deepEqual(ticks(0, 15, 5), [0, 5, 10, 15]);
});

test("a path goes through the finite points in order", () => {
  const identity = (v) => v;
  assert.equal(pathData([[0, 1], [2, NaN], [3, 4]], identity, identity), "M0.0,1.0L3.0,4.0");
  assert.equal(pathData([], identity, identity), "");
});

test("nothing trained yet draws no panel", () => {
  assert.deepEqual(curvesChart(null), { panels: [], legend: [] });
  assert.deepEqual(curvesChart({ 0: { loss: [], validation: [] } }), { panels: [], legend: [] });
});

test("the loss and accuracy panels hold a point per fold and epoch", () => {
  const chart = curvesChart(CURVES, { width: 300, height: 150 });
  assert.deepEqual(chart.panels.map((p) => p.name), ["loss", "accuracy"]);
  assert.deepEqual(chart.legend.map((l) => l.fold), ["0", "1"]);
  assert.notEqual(chart.legend[0].colour, chart.legend[1].colour);
  const [loss, accuracy] = chart.panels;
  // Fold 0: a training line and a dashed validation line with its two epochs; fold 1 has one
  // training point so far: no line yet, no point.
  assert.deepEqual(loss.lines.map((l) => [l.fold, l.dashed]), [["0", false], ["0", true]]);
  assert.equal(loss.points.length, 2);
  assert.match(loss.points[1].label, /fold 0, epoch 2: validation loss 1\.400/);
  assert.equal(accuracy.points.length, 2);
  // The epochs run left to right over the plot area; a higher accuracy is drawn higher.
  const [first, second] = accuracy.points;
  assert.ok(first.cx < second.cx && second.cy < first.cy);
  assert.ok(first.cx >= accuracy.plotArea.left && second.cx <= accuracy.plotArea.right);
  assert.equal(second.cx, accuracy.plotArea.right); // epoch 2 is the last epoch on the axis
  assert.deepEqual(accuracy.yTicks.map((t) => t.text), ["0", "0.5", "1"]);
});

test("a run trained before step losses were kept draws its per-epoch training loss", () => {
  const chart = curvesChart({ test: { loss: [], validation: CURVES[0].validation } });
  const [loss] = chart.panels;
  assert.equal(loss.lines.length, 2);
  assert.equal(loss.lines[0].d.split("L").length, 2);
});
