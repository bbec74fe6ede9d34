/*
 * The cells and labels of one scan in one round as the annotation screen edits them: every edit
 * changes the local state at once, is queued for the server (SaveQueue), and can be undone.
 * No DOM: annotate.js draws this state and turns keys and clicks into these calls.
 *
 * A cell is {key, id, x, y, version, label, savedLabel, deleted, order, suggestion}: `key` is
 * local (a new cell has no id until the server answers), `label` is what the screen shows and
 * `savedLabel` the label as the server last confirmed it.
 *
 * A cell the detector proposes is held the same way with `proposal` (its id) set and no `id`:
 * labelling it accepts it (it becomes a cell with that label), removing it rejects it (the
 * detector never proposes it again; undo or `restoreLastRejected` takes the rejection back),
 * and `acceptInView` accepts the proposals of a rectangle as unlabelled cells. Once accepted,
 * `proposal` is null and it is a cell like any.
 */
import { HttpError, staleState, urlFor } from "./http.js";

/** The label code of "cannot classify" (its own key, never a taxonomy code). */
export const CANNOT = "cannot classify";

/** The code a cell's label shows: a leaf's code, CANNOT, or null when unlabelled. */
export function labelCode(cell) {
  if (!cell.label) return null;
  return cell.label.cannot_classify ? CANNOT : cell.label.node;
}

function answerFor(code) {
  return code === CANNOT ? { node: null, cannot_classify: true } : { node: code, cannot_classify: false };
}

/**
 * The unlabelled cell nearest to `from` ({x, y} in level-0 pixels; a cell itself is passed
 * over), so that "next unlabelled" moves the examiner's eye as little as possible. Cells in
 * `skipped` (passed over with "next unlabelled") come only when no other is left, so that two
 * unlabelled neighbours are not visited in turn for ever. Ties go to the upper cell, then the
 * left one, then the older one. null when no other cell is unlabelled.
 */
export function nearestUnlabelled(cells, from, skipped = new Set()) {
  const distance = (cell) => (cell.x - from.x) ** 2 + (cell.y - from.y) ** 2;
  const before = (a, b) =>
    skipped.has(a) - skipped.has(b) || distance(a) - distance(b) || a.y - b.y || a.x - b.x || a.order - b.order;
  let best = null;
  for (const cell of cells) {
    if (cell.label || cell === from) continue;
    if (best === null || before(cell, best) < 0) best = cell;
  }
  return best;
}

// Proposals sort after every saved cell (ids stay far below) and before new ones (1e12 + key).
const PROPOSALS_AFTER = 1e11;

export class ScanAnnotations {
  /**
   * http: a client of lib/http.js; queue: a SaveQueue; urls: the templates the view sends
   * (cells, cell, labels, label); study (name), round (id) and scanId name what is edited.
   */
  constructor({ http, queue, urls, study, round, scanId }) {
    this.http = http;
    this.queue = queue;
    this.urls = urls;
    this.study = study;
    this.round = round;
    this.scanId = scanId;
    this.cells = new Map(); // local key -> cell
    this.nextKey = 1;
    this.undoStack = [];
    this.rejected = []; // proposals rejected on this screen, the last one last
    this.seenProposals = new Set(); // every proposal id this screen has held
  }

  /** A cell in the local state (not saved by this call). */
  add(fields) {
    const cell = Object.assign({ key: this.nextKey++, label: null, deleted: false }, fields);
    cell.order = cell.id != null ? cell.id : 1e12 + cell.key;
    this.cells.set(cell.key, cell);
    return cell;
  }

  /** Cells in the order they were made (saved ones by id, new ones after them). */
  sorted() {
    return Array.from(this.cells.values()).sort((a, b) => a.order - b.order);
  }

  /** The cell `direction` (+1 or -1) steps from `cell` in that order, wrapping around. */
  neighbour(cell, direction) {
    const list = this.sorted();
    if (!list.length) return null;
    // With no cell, +1 steps to the first and -1 to the last.
    const start = cell ? list.indexOf(cell) : direction > 0 ? -1 : list.length;
    const index = (((start + direction) % list.length) + list.length) % list.length;
    return list[index];
  }

  /** Proposed cells still waiting for a decision. */
  proposals() {
    return Array.from(this.cells.values()).filter((cell) => cell.proposal != null);
  }

  /** Load the scan's saved cells, this round's labels of them and the scan's proposals. */
  async load() {
    const [savedCells, savedLabels, proposed] = await Promise.all([
      this.http.getAll(urlFor(this.urls.cells, {}, { scan: this.scanId, study: this.study, page_size: 5000 })),
      this.http.getAll(urlFor(this.urls.labels, {}, { scan: this.scanId, round: this.round, page_size: 5000 })),
      this.urls.proposals ? this.http.getAll(urlFor(this.urls.proposals, {}, { page_size: 5000 })) : [],
    ]);
    this.addProposals(proposed);
    const labelByCell = new Map(savedLabels.map((label) => [label.cell, label]));
    for (const saved of savedCells) {
      const cell = this.add({
        id: saved.id, x: saved.x, y: saved.y, version: saved.version, suggestion: saved.suggestion,
      });
      cell.label = labelByCell.get(saved.id) || null;
      cell.savedLabel = cell.label;
    }
  }

  /** Load the proposals a detection finished since: those this screen never held; their count. */
  async loadProposals() {
    return this.addProposals(await this.http.getAll(urlFor(this.urls.proposals, {}, { page_size: 5000 })));
  }

  addProposals(found) {
    const fresh = found.filter((proposal) => !this.seenProposals.has(proposal.id));
    for (const proposal of fresh) {
      this.seenProposals.add(proposal.id);
      const cell = this.add({
        id: null, proposal: proposal.id, x: proposal.x, y: proposal.y, confidence: proposal.confidence,
      });
      cell.order = PROPOSALS_AFTER + proposal.id; // after the cells, as the detector read them
    }
    return fresh.length;
  }

  // ---- Edits: each changes the local state, queues its save and records its undo ----------

  /** Label a cell with a leaf's code, CANNOT, or null (no label); `seconds` spent on it. */
  label(cell, code, seconds) {
    this.undoStack.push({ kind: "label", cell: cell, before: labelCode(cell) });
    this.applyLabel(cell, code, seconds);
  }

  /** Mark a new cell at a level-0 point. */
  create(x, y) {
    const cell = this.add({ id: null, x: x, y: y, version: 1 });
    this.undoStack.push({ kind: "create", cell: cell });
    this.saveCreate(cell);
    return cell;
  }

  /**
   * Delete a cell (undo makes it again, as a new cell with its label); a proposal is rejected
   * instead (undo, or `restoreLastRejected`, proposes it again).
   */
  remove(cell) {
    if (cell.proposal != null) {
      this.cells.delete(cell.key);
      this.rejected.push(cell);
      this.undoStack.push({ kind: "reject", cell: cell });
      this.saveReject(cell, cell.proposal);
      return;
    }
    this.discard(cell);
    this.undoStack.push({ kind: "delete", cell: cell, label: labelCode(cell) });
  }

  /** Move a cell to a level-0 point (undo moves it back to where it is now). */
  move(cell, x, y) {
    this.undoStack.push({ kind: "move", cell: cell, x: cell.x, y: cell.y });
    cell.x = x;
    cell.y = y;
    this.saveMove(cell);
  }

  /**
   * Take back the last rejection made on this screen, also when other edits came after it
   * (they stay); returns the proposal's cell, or null when nothing was rejected.
   */
  restoreLastRejected() {
    const cell = this.rejected[this.rejected.length - 1];
    if (!cell) return null;
    this.undoStack = this.undoStack.filter((step) => !(step.kind === "reject" && step.cell === cell));
    this.restore(cell);
    return cell;
  }

  restore(cell) {
    this.rejected = this.rejected.filter((other) => other !== cell);
    this.cells.set(cell.key, cell);
    const proposal = cell.proposal;
    this.queue.add({
      run: async () => {
        await this.http.post(urlFor(this.urls.restoreProposal, { id: proposal }), { study: this.study });
      },
      // Not rejected any more (taken back in another tab, or gone): shown as the server has it.
      refused: async () => {
        try {
          const saved = await this.http.get(urlFor(this.urls.proposal, { id: proposal }));
          if (saved.status !== "proposed") this.cells.delete(cell.key);
        } catch (error) {
          this.cells.delete(cell.key);
        }
      },
    });
  }

  /**
   * Undo the last edit; null when there is none. Returns {kind, cell}: the edit undone and the
   * cell it concerns now (for an undone delete, the cell made again in its place).
   */
  undo() {
    const step = this.undoStack.pop();
    if (!step) return null;
    const cell = step.cell;
    if (step.kind === "label") {
      this.applyLabel(cell, step.before, 0);
      return { kind: step.kind, cell: cell };
    }
    if (step.kind === "create") {
      this.discard(cell);
    } else if (step.kind === "reject") {
      this.restore(cell);
    } else if (step.kind === "move") {
      cell.x = step.x;
      cell.y = step.y;
      this.saveMove(cell);
    } else if (step.kind === "delete") {
      const again = this.add({ id: null, x: cell.x, y: cell.y, version: 1 });
      this.saveCreate(again);
      if (step.label) this.applyLabel(again, step.label, 0);
      return { kind: step.kind, cell: again };
    }
    return { kind: step.kind, cell: cell };
  }

  applyLabel(cell, code, seconds) {
    if (code === null) cell.label = null;
    else cell.label = Object.assign({}, cell.label || {}, answerFor(code));
    if (cell.proposal != null && code !== null) {
      const proposal = cell.proposal;
      cell.proposal = null;
      this.saveAccept(cell, proposal, code, seconds);
      return;
    }
    this.saveLabel(cell, code, seconds);
  }

  /**
   * Accept every proposal inside a level-0 rectangle {x0, y0, x1, y1} (edges included) as an
   * unlabelled cell; returns how many were shown there. Not undone by undo.
   */
  acceptInView(view) {
    const inside = (cell) => cell.x >= view.x0 && cell.x <= view.x1 && cell.y >= view.y0 && cell.y <= view.y1;
    const accepted = this.proposals().filter(inside);
    const byProposal = new Map(accepted.map((cell) => [cell.proposal, cell]));
    for (const cell of accepted) cell.proposal = null;
    this.queue.add({
      run: async () => {
        const done = await this.http.post(this.urls.acceptInView, Object.assign({ study: this.study }, view));
        for (const pair of done.cells) {
          const cell = byProposal.get(pair.proposal);
          if (cell) {
            cell.id = pair.cell;
            cell.version = 1;
            cell.order = pair.cell;
            byProposal.delete(pair.proposal);
          }
        }
        // Decided by someone else meanwhile: not a cell of this screen.
        for (const cell of byProposal.values()) this.cells.delete(cell.key);
      },
      refused: async () => {
        for (const [proposal, cell] of byProposal) cell.proposal = proposal;
      },
    });
    return accepted.length;
  }

  discard(cell) {
    cell.deleted = true;
    this.cells.delete(cell.key);
    this.saveDelete(cell);
  }

  // ---- Saves: queued in order; a refusal loads the server's state back ----------------

  saveCreate(cell) {
    this.queue.add({
      run: async () => {
        if (cell.deleted) return;
        const saved = await this.http.post(this.urls.cells, {
          study: this.study, scan: this.scanId, x: cell.x, y: cell.y,
        });
        cell.id = saved.id;
        cell.version = saved.version;
      },
      refused: async () => this.cells.delete(cell.key),
    });
  }

  saveLabel(cell, code, seconds) {
    this.queue.add({
      run: async () => {
        if (cell.deleted || cell.id == null) return;
        if (code === null) {
          if (!cell.savedLabel) return;
          await this.http.delete(
            urlFor(this.urls.label, { id: cell.savedLabel.id }, { version: cell.savedLabel.version })
          );
          cell.savedLabel = null;
          return;
        }
        const answer = Object.assign(answerFor(code), { seconds_spent: seconds });
        const saved = cell.savedLabel
          ? await this.http.patch(urlFor(this.urls.label, { id: cell.savedLabel.id }),
            Object.assign({ version: cell.savedLabel.version }, answer))
          : await this.http.post(this.urls.labels, Object.assign({ cell: cell.id, round: this.round }, answer));
        // The shown label stays the local one when a later change of it is still queued.
        cell.savedLabel = saved;
        if (labelCode(cell) === labelCode({ label: saved })) cell.label = saved;
      },
      refused: async (error) => {
        const current = staleState(error);
        if (current) {
          cell.label = current;
        } else {
          await this.reload(cell);
        }
        cell.savedLabel = cell.label;
      },
    });
  }

  saveAccept(cell, proposal, code, seconds) {
    this.queue.add({
      run: async () => {
        const answer = Object.assign(answerFor(code), { seconds_spent: seconds, study: this.study });
        const done = await this.http.post(urlFor(this.urls.acceptProposal, { id: proposal }), answer);
        cell.id = done.cell.id;
        cell.version = done.cell.version;
        cell.order = done.cell.id;
        cell.savedLabel = done.label;
        if (labelCode(cell) === labelCode({ label: done.label })) cell.label = done.label;
      },
      // Decided already (by someone else, or in another tab): the screen forgets it.
      refused: async () => this.cells.delete(cell.key),
    });
  }

  saveReject(cell, proposal) {
    this.queue.add({
      run: async () => {
        await this.http.post(urlFor(this.urls.rejectProposal, { id: proposal }), { study: this.study });
      },
      refused: async () => {},
    });
  }

  saveMove(cell) {
    const x = cell.x;
    const y = cell.y;
    this.queue.add({
      run: async () => {
        if (cell.deleted || cell.id == null) return;
        const saved = await this.http.patch(urlFor(this.urls.cell, { id: cell.id }), {
          x: x, y: y, version: cell.version,
        });
        cell.version = saved.version;
      },
      refused: async () => this.reload(cell),
    });
  }

  saveDelete(cell) {
    this.queue.add({
      run: async () => {
        if (cell.id == null) return;
        await this.http.delete(urlFor(this.urls.cell, { id: cell.id }, { version: cell.version }));
      },
      refused: async () => {
        cell.deleted = false;
        this.cells.set(cell.key, cell);
        await this.reload(cell);
      },
    });
  }

  /** A cell's saved position and label, after the server refused a change of it. */
  async reload(cell) {
    if (cell.id == null) {
      this.cells.delete(cell.key);
      return;
    }
    try {
      const saved = await this.http.get(urlFor(this.urls.cell, { id: cell.id }));
      Object.assign(cell, { x: saved.x, y: saved.y, version: saved.version, deleted: false });
      const labels = await this.http.get(urlFor(this.urls.labels, {}, { cell: cell.id, round: this.round }));
      cell.label = labels.results.length ? labels.results[0] : null;
    } catch (error) {
      if (error instanceof HttpError && error.status === 404) this.cells.delete(cell.key);
    }
  }
}
