/**
 * Keeps the viewer's signed tile link current. The scan's descriptor hands the viewer a link to
 * its tiles that expires (TILE_LINK_SECONDS); before it does, a new one is fetched and becomes
 * the tile source's base, so that tiles asked for later use it. A refusal (the user has lost
 * sight of the scan: a blinded round, a membership gone) stops it and is reported; a network
 * failure is tried again a little later. No DOM here: tested under Node.
 */
import { HttpError } from "./http.js";

/** Refresh when 60 % of a link's life has passed, and never more often than every 5 s. */
export function refreshDelayMs(secondsLeft) {
  return Math.max(5, secondsLeft * 0.6) * 1000;
}

export const RETRY_MS = 30_000;

export class TileLinkKeeper {
  /**
   * fetchLink(): resolves to `{ tiles_url, expires_in }` (the API's tiles/link answer);
   * apply(url): makes `url` the base of the tiles asked for from now on;
   * onLost(error): the link cannot be renewed (a 4xx answer).
   */
  constructor({ fetchLink, apply, onLost, schedule = (run, ms) => setTimeout(run, ms) }) {
    this.fetchLink = fetchLink;
    this.apply = apply;
    this.onLost = onLost;
    this.schedule = schedule;
    this.stopped = false;
  }

  /** Plan the next refresh for a link with `secondsLeft` to live. */
  start(secondsLeft) {
    this.schedule(() => this.refresh(), refreshDelayMs(secondsLeft));
  }

  async refresh() {
    if (this.stopped) return;
    let link;
    try {
      link = await this.fetchLink();
    } catch (error) {
      if (error instanceof HttpError && error.status < 500 && error.status !== 429) {
        this.stopped = true;
        this.onLost(error);
      } else {
        this.schedule(() => this.refresh(), RETRY_MS);
      }
      return;
    }
    this.apply(link.tiles_url);
    this.start(link.expires_in);
  }
}
