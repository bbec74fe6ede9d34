/*
 * The one HTTP client of every page script: JSON in and out with the session's CSRF token, an
 * error that carries the status and the answer's body, URLs filled in from the templates the
 * views send, and what a caller needs to decide between retrying (a lost connection, 5xx, 429:
 * with growing pauses) and giving up (a refusal; a 409 may carry the state stored meanwhile).
 *
 * No DOM here: page.js reads the token and the config from the page, and the tests run this
 * file under Node.
 */

/** A non-2xx answer: its status, its parsed body and the reason the body gives. */
export class HttpError extends Error {
  constructor(status, body) {
    super(describeError(body) || "HTTP " + status);
    this.name = "HttpError";
    this.status = status;
    this.body = body;
  }
}

/** The reason an error body gives: DRF's `detail`, or each field with its problems. */
export function describeError(body) {
  if (!body || typeof body !== "object") return "";
  if (body.detail) return String(body.detail);
  return Object.entries(body)
    .map(([field, problems]) => field + ": " + [].concat(problems).join(" "))
    .join("; ");
}

/**
 * A client whose `request(method, url, body)` sends `body` as JSON and resolves to the parsed
 * answer (null when empty), or rejects with an HttpError (or the network's own error);
 * `exchange` resolves to `{ status, data }` where the success status itself matters (201 or 200).
 */
export function createClient({ csrfToken = "", fetch: send = (...args) => globalThis.fetch(...args) } = {}) {
  async function exchange(method, url, body) {
    const response = await send(url, {
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
    } catch {
      data = { detail: text.slice(0, 200) };
    }
    if (!response.ok) throw new HttpError(response.status, data);
    return { status: response.status, data };
  }

  async function request(method, url, body) {
    return (await exchange(method, url, body)).data;
  }

  /** Every item of a paginated list, following `next` until the last page. */
  async function getAll(url) {
    const items = [];
    while (url) {
      const page = await request("GET", url);
      items.push(...page.results);
      url = page.next;
    }
    return items;
  }

  return {
    exchange,
    request,
    getAll,
    get: (url) => request("GET", url),
    post: (url, body) => request("POST", url, body),
    put: (url, body) => request("PUT", url, body),
    patch: (url, body) => request("PATCH", url, body),
    delete: (url) => request("DELETE", url),
  };
}

/** Whether trying again later may succeed: no answer at all, a server error, or "too many". */
export function isRetryable(error) {
  return !(error instanceof HttpError) || error.status >= 500 || error.status === 429;
}

/**
 * The state stored on the server when a change was refused because it was made on a stale copy
 * (409 with `current`); null for any other error, including a 409 that only says why.
 */
export function staleState(error) {
  const stale = error instanceof HttpError && error.status === 409 && error.body && error.body.current;
  return stale ? error.body.current : null;
}

/** Pauses between retries: the first, then twice the one before, up to `max` (milliseconds). */
export class Backoff {
  constructor({ first = 1000, max = 30000 } = {}) {
    this.first = first;
    this.max = max;
    this.delay = first;
  }

  /** The pause before the next attempt; the one after it will be longer. */
  next() {
    const delay = this.delay;
    this.delay = Math.min(delay * 2, this.max);
    return delay;
  }

  /** After a success: the next failure waits the first pause again. */
  reset() {
    this.delay = this.first;
  }
}

/**
 * A URL from a template the view built (core.url_templates.url_template: a reversed route with
 * `{id}`-style placeholders): each `{name}` becomes `values[name]`, encoded; `query` adds a
 * query string.
 */
export function urlFor(template, values = {}, query = null) {
  const path = template.replace(/\{(\w+)\}/g, (placeholder, name) => {
    if (!(name in values)) throw new Error("No value for " + placeholder + " in " + template);
    return encodeURIComponent(values[name]);
  });
  if (!query) return path;
  return path + (path.includes("?") ? "&" : "?") + new URLSearchParams(query).toString();
}
