/*
 * What every page script reads from its page: the config the view put there with
 * `{{ config|json_script:"ID" }}` (URLs built with reverse(), never written in the scripts) and
 * the CSRF token for the HTTP client; the key help of a screen and its buttons' focus; and the
 * polling of a table of running jobs.
 */
import { Backoff, createClient, isRetryable } from "./http.js";
import { keyHelp } from "./keys.js";

/** The JSON a view rendered into the page with json_script under this element id. */
export function pageConfig(id) {
  return JSON.parse(document.getElementById(id).textContent);
}

/** A lib/http.js client with the CSRF token of the page's form (none on a page without one). */
export function pageClient() {
  const field = document.querySelector("[name=csrfmiddlewaretoken]");
  return createClient({ csrfToken: field ? field.value : "" });
}

/** Fill a <dl> with a screen's keys (lib/keys.js), so that the help says what the keys do. */
export function showKeyHelp(list, screen) {
  for (const [keys, does] of keyHelp(screen)) {
    const term = document.createElement("dt");
    term.textContent = keys;
    const description = document.createElement("dd");
    description.textContent = does;
    list.append(term, description);
  }
}

/**
 * Buttons under `element` do not take the keyboard focus when pressed with the mouse (Tab still
 * reaches them), and the focus leaves whatever had it, as a click elsewhere on the page would
 * do: a focused button takes Space and Enter, which then would press it again instead of
 * meaning what the screen's key map says.
 */
export function noFocusOnMouse(element) {
  element.addEventListener("mousedown", (event) => {
    if (!event.target.closest("button")) return;
    event.preventDefault();
    if (document.activeElement instanceof HTMLElement) document.activeElement.blur();
  });
}

/**
 * Keep a table's unfinished rows up to date: every `interval` ms, GET `urlOf(row)` for each row
 * matching `selector` that `isUnfinished(row)`, and hand the answer to `update(row, answer)`,
 * which returns false to stop (e.g. when it reloads the page). Stops when no row is unfinished.
 * A lost connection or a busy server is asked again after growing pauses; a row whose answer is
 * a refusal is left as it is until the next round.
 */
export function pollRows({ selector, isUnfinished, urlOf, update, interval = 1000 }) {
  const http = pageClient();
  const backoff = new Backoff();
  async function poll() {
    let pending = 0;
    for (const row of document.querySelectorAll(selector)) {
      if (!isUnfinished(row)) continue;
      pending += 1;
      let answer;
      try {
        answer = await http.get(urlOf(row));
      } catch (error) {
        if (isRetryable(error)) {
          setTimeout(poll, backoff.next());
          return;
        }
        continue;
      }
      backoff.reset();
      if (update(row, answer) === false) return;
    }
    if (pending) setTimeout(poll, interval);
  }
  poll();
}
