// The shared HTTP client: JSON both ways with the CSRF token, errors that carry status and body,
// the retry and conflict rules, and URLs filled in from the views' templates.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HttpError, createClient, isRetryable, staleState, urlFor } from "../static/js/lib/http.js";

function server(status, text) {
  const sent = [];
  const fetch = async (url, init) => {
    sent.push({ url, ...init });
    return { ok: status >= 200 && status < 300, status, text: async () => text };
  };
  return { sent, fetch };
}

test("a request sends JSON with the CSRF token and resolves to the parsed answer", async () => {
  const { sent, fetch } = server(201, '{"id": 4}');
  const http = createClient({ csrfToken: "abc", fetch });
  assert.deepEqual(await http.post("/somewhere/", { x: 1 }), { id: 4 });
  assert.equal(sent[0].method, "POST");
  assert.equal(sent[0].body, '{"x":1}');
  assert.equal(sent[0].headers["X-CSRFToken"], "abc");
  assert.equal(sent[0].headers["Content-Type"], "application/json");
  assert.equal(sent[0].credentials, "same-origin");
});

test("an empty answer (204) resolves to null", async () => {
  const http = createClient({ fetch: server(204, "").fetch });
  assert.equal(await http.delete("/somewhere/"), null);
});

test("a refusal rejects with its status, body and the reason it gives", async () => {
  const conflict = createClient({ fetch: server(409, '{"detail": "Changed.", "current": {"node": "EOS"}}').fetch });
  const error = await conflict.patch("/x/", {}).catch((e) => e);
  assert.ok(error instanceof HttpError);
  assert.equal(error.status, 409);
  assert.equal(error.message, "Changed.");
  assert.deepEqual(staleState(error), { node: "EOS" });

  const invalid = createClient({ fetch: server(400, '{"x": ["Too big."], "y": ["Missing.", "Twice."]}').fetch });
  assert.equal((await invalid.post("/x/", {}).catch((e) => e)).message, "x: Too big.; y: Missing. Twice.");

  const html = createClient({ fetch: server(502, "<html>Bad gateway</html>").fetch });
  assert.equal((await html.get("/x/").catch((e) => e)).message, "<html>Bad gateway</html>");
});

test("getAll follows the pages of a list", async () => {
  const pages = {
    "/list/": { results: [1, 2], next: "/list/?page=2" },
    "/list/?page=2": { results: [3], next: null },
  };
  const fetch = async (url) => ({ ok: true, status: 200, text: async () => JSON.stringify(pages[url]) });
  assert.deepEqual(await createClient({ fetch }).getAll("/list/"), [1, 2, 3]);
});

test("retry what may succeed later; never a refusal", () => {
  assert.equal(isRetryable(new TypeError("Failed to fetch")), true);
  assert.equal(isRetryable(new HttpError(500, null)), true);
  assert.equal(isRetryable(new HttpError(503, null)), true);
  assert.equal(isRetryable(new HttpError(429, null)), true);
  for (const status of [400, 403, 404, 409]) assert.equal(isRetryable(new HttpError(status, null)), false);
});

test("only a 409 that carries the stored state is a stale copy", () => {
  assert.equal(staleState(new HttpError(409, { detail: "This cell cannot be moved." })), null);
  assert.equal(staleState(new HttpError(400, { current: { node: "EOS" } })), null);
  assert.equal(staleState(new TypeError("offline")), null);
});

test("urlFor fills the placeholders of a view's template, encoded, and adds a query", () => {
  assert.equal(urlFor("/q/7/items/{position}/", { position: 3 }), "/q/7/items/3/");
  assert.equal(urlFor("/q/items/{token}/answer/", { token: "a/b c" }), "/q/items/a%2Fb%20c/answer/");
  assert.equal(urlFor("/labels/{id}/", { id: 5 }, { version: 2 }), "/labels/5/?version=2");
  assert.equal(urlFor("/cells/", {}, { scan: 1, study: "a b" }), "/cells/?scan=1&study=a+b");
  assert.throws(() => urlFor("/cells/{id}/", {}), /No value for \{id\}/);
});

test("an exchange resolves to the answer's status beside its body", async () => {
  const http = createClient({ fetch: server(201, '{"id": 4}').fetch });
  assert.deepEqual(await http.exchange("POST", "/somewhere/", {}), { status: 201, data: { id: 4 } });
});
