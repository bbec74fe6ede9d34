/*
 * Where the label picker goes beside the selected cell. The picker (about 290 x 570 px) floats
 * next to the cell so that the eye moves little between cell and classes; where it floats it
 * hides the slide, so of the places beside the cell that fit in the viewer it takes the one over
 * the fewest other markers, never over the mouse pointer (a click aimed at the slide must not
 * land on a button that just appeared under it), preferring right, left, below, above in that
 * order and, on a side, the place nearest the cell's height (or width). No DOM: annotate.js
 * passes screen coordinates in viewer-element pixels.
 */

/** Pixels between the marker's ring and the picker, and between the picker and the viewer's edge. */
export const GAP = 16;
export const MARGIN = 8;
// Pixels around the mouse pointer the picker keeps clear of.
const POINTER_CLEARANCE = 12;

// Positions tried along each side: shifts of the picker, as fractions of its free length, that
// still keep the cell within its span (0.5 centres it on the cell).
const SHIFTS = [0.5, 0.35, 0.65, 0.2, 0.8, 0.05, 0.95, 0, 1];
const SIDES = ["right", "left", "below", "above"];

/**
 * The box {left, top, width, height} of the picker on `side` of a cell at (x, y) with a ring of
 * `radius`, moved along the side by `shift` (0: its top or left end at the cell, 1: its other end).
 */
export function pickerBox(side, shift, { x, y, radius }, { width, height }) {
  const reach = radius + GAP;
  const along = (length) => -length + (1 - shift) * length;
  if (side === "right" || side === "left") {
    const left = side === "right" ? x + reach : x - reach - width;
    return { left, top: y + along(height - 2 * radius) - radius, width, height };
  }
  const top = side === "below" ? y + reach : y - reach - height;
  return { left: x + along(width - 2 * radius) - radius, top, width, height };
}

/** Whether a box overlaps the disc of `radius` around `point`. */
export function overlapsCircle(box, point, radius) {
  const nearestX = Math.max(box.left, Math.min(point.x, box.left + box.width));
  const nearestY = Math.max(box.top, Math.min(point.y, box.top + box.height));
  const dx = point.x - nearestX;
  const dy = point.y - nearestY;
  return dx * dx + dy * dy < radius * radius;
}

/** Whether a box lies inside the viewer, MARGIN from its edges. */
export function fits(box, stage) {
  return (
    box.left >= MARGIN && box.top >= MARGIN &&
    box.left + box.width <= stage.width - MARGIN && box.top + box.height <= stage.height - MARGIN
  );
}

function clamp(box, stage) {
  const left = Math.max(MARGIN, Math.min(stage.width - MARGIN - box.width, box.left));
  const top = Math.max(MARGIN, Math.min(stage.height - MARGIN - box.height, box.top));
  return Object.assign({}, box, { left, top });
}

/**
 * The place of the picker: {side, shift, box, covered} with `covered` the number of `markers`
 * (screen points of the other cells, each a ring of `cell.radius`) under the box.
 *
 * cell: {x, y, radius} of the selected cell; size: {width, height} of the picker; stage:
 * {width, height} of the viewer; pointer: the mouse's point, or null when it is not over the
 * viewer. When no place beside the cell fits (a viewer smaller than the picker), the best one
 * is moved inside the viewer.
 */
export function placePicker({ cell, size, stage, markers, pointer = null }) {
  let best = null;
  for (const [order, side] of SIDES.entries()) {
    for (const [rank, shift] of SHIFTS.entries()) {
      const raw = pickerBox(side, shift, cell, size);
      const inside = fits(raw, stage);
      const box = inside ? raw : clamp(raw, stage);
      const covered = countCovered(box, markers, cell.radius);
      const score = [
        pointer && overlapsCircle(box, pointer, POINTER_CLEARANCE) ? 1 : 0,
        inside ? 0 : 1,
        overlapsCircle(box, cell, cell.radius + 2) ? 1 : 0,
        covered,
        order,
        rank,
      ];
      if (!best || lessThan(score, best.score)) best = { side, shift, box, covered, score };
    }
  }
  return { side: best.side, shift: best.shift, box: best.box, covered: best.covered };
}

/** How many of `markers` (rings of `radius`) a box covers, wholly or in part. */
export function countCovered(box, markers, radius) {
  return markers.filter((marker) => overlapsCircle(box, marker, radius + 2)).length;
}

function lessThan(a, b) {
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return a[i] < b[i];
  }
  return false;
}
