// Where the label picker goes: beside the selected cell, inside the viewer, over as few other
// markers as possible and never under the mouse pointer.
import assert from "node:assert/strict";
import { test } from "node:test";

import { countCovered, fits, overlapsCircle, pickerBox, placePicker } from "../static/js/lib/picker-placement.js";

const size = { width: 290, height: 570 };
const stage = { width: 1200, height: 800 };
const radius = 20;
const at = (x, y) => ({ x, y, radius });

function check(place, cell, markers) {
  assert.ok(fits(place.box, stage), "inside the viewer");
  assert.ok(!overlapsCircle(place.box, cell, radius + 2), "the selected cell stays visible");
  assert.equal(place.covered, countCovered(place.box, markers, radius));
}

test("with nothing around, the picker goes to the right of the cell, level with it", () => {
  const cell = at(400, 400);
  const place = placePicker({ cell, size, stage, markers: [] });
  assert.equal(place.side, "right");
  assert.ok(place.box.left > cell.x + radius);
  assert.ok(place.box.top < cell.y && place.box.top + size.height > cell.y);
  check(place, cell, []);
});

test("markers to the right send it to the left, covering none", () => {
  const cell = at(600, 400);
  const markers = [at(680, 380), at(700, 450), at(760, 300), at(850, 500)];
  const place = placePicker({ cell, size, stage, markers });
  assert.equal(place.side, "left");
  assert.equal(place.covered, 0);
  check(place, cell, markers);
});

test("a marker level with the cell on the left and one high on the right: it slides down the right", () => {
  const cell = at(600, 300);
  const markers = [at(700, 100), at(760, 60), at(520, 300), at(600, 200), at(600, 420)];
  const place = placePicker({ cell, size, stage, markers });
  assert.equal(place.side, "right");
  assert.equal(place.covered, 0);
  assert.ok(place.box.top > 122, "below the high marker");
  check(place, cell, markers);
});

test("where every place covers markers, it takes one covering fewer than the others", () => {
  const cell = at(600, 400);
  const markers = [];
  for (let x = 40; x < 1200; x += 80) {
    for (let y = 40; y < 800; y += 80) {
      if (Math.abs(x - cell.x) > 60 || Math.abs(y - cell.y) > 60) markers.push(at(x, y));
    }
  }
  markers.push(at(900, 100), at(900, 300), at(900, 500), at(900, 700), at(700, 400)); // more on the right
  const place = placePicker({ cell, size, stage, markers });
  for (const side of ["right", "left", "below", "above"]) {
    const centred = pickerBox(side, 0.5, cell, size);
    if (fits(centred, stage)) assert.ok(place.covered <= countCovered(centred, markers, radius), side);
  }
  assert.ok(place.covered < countCovered(pickerBox("right", 0.5, cell, size), markers, radius));
  assert.notEqual(place.side, "right");
  check(place, cell, markers);
});

test("near the viewer's right edge it goes left; near the bottom it still fits", () => {
  const edge = at(1100, 400);
  assert.equal(placePicker({ cell: edge, size, stage, markers: [] }).side, "left");
  const low = at(400, 780);
  const place = placePicker({ cell: low, size, stage, markers: [] });
  check(place, low, []);
});

test("never under the mouse pointer, which is where the next click lands", () => {
  const cell = at(400, 400);
  const free = placePicker({ cell, size, stage, markers: [] });
  const pointer = { x: free.box.left + 100, y: free.box.top + 200 };
  const place = placePicker({ cell, size, stage, markers: [], pointer });
  assert.ok(!overlapsCircle(place.box, pointer, 10));
  check(place, cell, []);
});

test("in a viewer too small for any place beside the cell, it is kept inside the viewer", () => {
  const small = { width: 500, height: 400 };
  const picker = { width: 290, height: 280 }; // the picker is at most 70 % of the viewer's height
  const place = placePicker({ cell: at(250, 200), size: picker, stage: small, markers: [] });
  assert.ok(fits(place.box, small));
});
