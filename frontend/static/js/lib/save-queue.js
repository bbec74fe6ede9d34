/*
 * Changes sent to the server one at a time, in the order they were made, so that a label made on
 * a cell that is still being created waits for the cell's id. A lost connection, a server error
 * or a 429 is retried with growing pauses (nothing is dropped while the page is open); a refusal
 * (4xx, among them a 409 for a change made on a stale copy) drops that change and lets its
 * `refused` handler load the server's state instead of overwriting it.
 *
 * No DOM: the page hears of progress through the callbacks and draws it itself.
 */
import { Backoff, isRetryable } from "./http.js";

const wait = (milliseconds) => new Promise((resolve) => setTimeout(resolve, milliseconds));

export class SaveQueue {
  /**
   * onStatus({state, pending, retryInSeconds}): state is "saved" (nothing waiting), "saving" or
   * "failed" (waiting `retryInSeconds` before trying again).
   * onRefused(error): a change was refused, after its own `refused` handler ran.
   * onSettled(): a change was saved or refused (the page redraws).
   * sleep and backoff are for the tests, which do not want to wait.
   */
  constructor({
    onStatus = () => {},
    onRefused = () => {},
    onSettled = () => {},
    sleep = wait,
    backoff = new Backoff(),
  } = {}) {
    this.operations = [];
    this.running = null;
    this.onStatus = onStatus;
    this.onRefused = onRefused;
    this.onSettled = onSettled;
    this.sleep = sleep;
    this.backoff = backoff;
  }

  /** How many changes are not saved yet (the one being sent included). */
  get pending() {
    return this.operations.length;
  }

  /**
   * Queue a change: `run()` sends it (it may read what earlier changes learned, such as a new
   * cell's id); `refused(error)` repairs the local state when the server refuses it.
   */
  add(operation) {
    this.operations.push(operation);
    this.reportStatus();
    if (!this.running) this.running = this.drain();
    return this.running;
  }

  /** Resolves once every queued change is saved or refused. */
  idle() {
    return this.running || Promise.resolve();
  }

  reportStatus() {
    this.onStatus({ state: this.pending ? "saving" : "saved", pending: this.pending });
  }

  async drain() {
    while (this.operations.length) {
      const operation = this.operations[0];
      try {
        await operation.run();
        this.operations.shift();
        this.backoff.reset();
      } catch (error) {
        if (isRetryable(error)) {
          const delay = this.backoff.next();
          this.onStatus({
            state: "failed",
            pending: this.pending,
            retryInSeconds: Math.round(delay / 1000),
          });
          await this.sleep(delay);
          continue;
        }
        this.operations.shift();
        try {
          if (operation.refused) await operation.refused(error);
        } catch {
          // Reloading the refused state failed too: the page keeps what it shows, and says why
          // the change was refused below.
        }
        this.onRefused(error);
      }
      this.reportStatus();
      this.onSettled();
    }
    this.running = null;
    this.reportStatus();
  }
}
