// An in-memory stand-in for the cells and labels API, answering the `fetch` calls of a
// lib/http.js client as the server does: versions checked on every change (409 with the stored
// state when a copy is stale), 404 for what is gone, faults injected on demand.

export const URLS = {
  cells: "/fake/cells/",
  cell: "/fake/cells/{id}/",
  labels: "/fake/labels/",
  label: "/fake/labels/{id}/",
};

function answer(status, body) {
  return {
    ok: status >= 200 && status < 300,
    status,
    text: async () => (body === undefined ? "" : JSON.stringify(body)),
  };
}

export class FakeApi {
  constructor() {
    this.cells = new Map(); // id -> {id, x, y, version, suggestion}
    this.labels = new Map(); // id -> {id, cell, round, node, cannot_classify, seconds_spent, version}
    this.nextId = 1;
    this.requests = []; // "METHOD path?query", in the order they arrived
    this.faults = [];
    this.refuseMoves = null; // a message: moves and deletes are refused with 409 and it
    this.fetch = this.fetch.bind(this);
  }

  /** The next `times` requests matching `method` and `path` fail: "network", or a status. */
  failNext({ method, path, times = 1, as = "network" }) {
    this.faults.push({ method, path, times, as });
  }

  /** A cell saved on the server (as if made before the page loaded). */
  addCell(fields) {
    const cell = { id: this.nextId++, version: 1, suggestion: null, ...fields };
    this.cells.set(cell.id, cell);
    return cell;
  }

  /** A label saved on the server by someone else (or another tab). */
  addLabel(fields) {
    const label = { id: this.nextId++, version: 1, cannot_classify: false, seconds_spent: 0, ...fields };
    this.labels.set(label.id, label);
    return label;
  }

  labelOf(cellId) {
    return [...this.labels.values()].find((label) => label.cell === cellId) || null;
  }

  async fetch(url, init) {
    const method = init.method;
    const parsed = new URL(url, "http://fake.invalid");
    this.requests.push(method + " " + parsed.pathname + parsed.search);
    const fault = this.faults.find(
      (f) => f.times > 0 && f.method === method && parsed.pathname.startsWith(f.path)
    );
    if (fault) {
      fault.times -= 1;
      if (fault.as === "network") throw new TypeError("Failed to fetch");
      return answer(fault.as, { detail: "Fault " + fault.as + " injected." });
    }
    const body = init.body ? JSON.parse(init.body) : {};
    const query = Object.fromEntries(parsed.searchParams);
    const [, , kind, id] = parsed.pathname.split("/");
    const table = kind === "cells" ? this.cells : this.labels;
    if (!id) return this.onList(kind, method, body, query);
    const stored = table.get(Number(id));
    if (!stored) return answer(404, { detail: "Not found." });
    return this.onItem(kind, table, stored, method, body, query);
  }

  onList(kind, method, body, query) {
    if (method === "GET") {
      const table = kind === "cells" ? this.cells : this.labels;
      const results = [...table.values()].filter((row) =>
        kind === "cells"
          ? String(row.scan) === query.scan
          : String(row.round) === query.round && (!query.cell || String(row.cell) === query.cell)
      );
      return answer(200, { results, next: null });
    }
    if (kind === "cells") return answer(201, this.addCell({ x: body.x, y: body.y, scan: body.scan }));
    const existing = this.labelOf(body.cell);
    if (existing) return answer(409, { detail: "This cell has a label already.", current: existing });
    const { cell, round, node, cannot_classify, seconds_spent } = body;
    return answer(201, this.addLabel({ cell, round, node, cannot_classify, seconds_spent }));
  }

  onItem(kind, table, stored, method, body, query) {
    if (method === "GET") return answer(200, stored);
    const version = Number(method === "DELETE" ? query.version : body.version);
    if (version !== stored.version) {
      return answer(409, { detail: "Changed since you loaded it.", current: stored });
    }
    if (kind === "cells" && this.refuseMoves) return answer(409, { detail: this.refuseMoves });
    if (method === "DELETE") {
      table.delete(stored.id);
      return answer(204);
    }
    const fields = kind === "cells" ? ["x", "y"] : ["node", "cannot_classify", "seconds_spent"];
    for (const field of fields) stored[field] = body[field];
    stored.version += 1;
    return answer(200, stored);
  }
}
