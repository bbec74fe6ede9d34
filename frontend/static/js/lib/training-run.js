/*
 * The words of the training page for a run: its banner after it was started, and the line of
 * its progress (the time left is the server's estimate from measured step times).
 */

const BANNERS = {
  queued: (id) => `Training run ${id} is queued: it starts when a training worker is free.`,
  running: (id) => `Training run ${id} is running.`,
  done: (id) => `Training run ${id} finished: its report is linked in its row.`,
  failed: (id) => `Training run ${id} failed: the reason is in its row.`,
  cancelled: (id) => `Training run ${id} was cancelled.`,
};

/** The banner of a run in this state. */
export function runBanner(id, status) {
  const words = BANNERS[status];
  return words ? words(id) : `Training run ${id}: ${status}.`;
}

/** The time left in words: "estimating…" until the server has measured enough steps. */
export function timeLeft(seconds) {
  if (seconds == null) return "estimating time left…";
  if (seconds < 90) return `about ${Math.max(1, Math.ceil(seconds))} s left`;
  return `about ${Math.ceil(seconds / 60)} min left`;
}

/** A running run's line: fold, epoch, step, loss and time left. */
export function runDetail(progress) {
  if (!progress || progress.fold === undefined) return "";
  const loss = progress.loss == null ? "" : `, loss ${progress.loss.toFixed(3)}`;
  const step = `step ${progress.step || 0}/${progress.steps || "?"}`;
  return `fold ${progress.fold_number}/${progress.folds}, epoch ${progress.epoch}, ${step}${loss}, ${timeLeft(progress.eta_seconds)}`;
}
