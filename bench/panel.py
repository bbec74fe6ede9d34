"""Benchmark: panel agreement of 10 raters on 18,365 items (the public AML set's size), 5 % of
ratings missing and 1 % "cannot classify", 15 classes, 200 patients.

    panel      `annotator.panel_agreement.panel_agreement`: Fleiss' kappa (undefined here: the
               missing ratings make items unequal, so also run on the complete table), its
               standard error, Krippendorff's alpha with a 1,000-resample bootstrap over
               patients, the 10 x 10 Cohen's kappa matrix, per-class specific agreement;
    baseline   the bare library calls on the same data: statsmodels' `fleiss_kappa`, one
               `krippendorff.alpha`, and `cohens_kappa` for each of the 45 pairs (no bootstrap).

Goal: the panel report within 5 s. Prints best-of-`--repeats` times, their ratio, and the
peak memory of the process (tracemalloc's peak of the panel call, NumPy's arrays included).

    .venv/bin/python bench/panel.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import krippendorff
from statsmodels.stats.inter_rater import cohens_kappa, fleiss_kappa

from annotator.panel_agreement import CANNOT_CLASSIFY, panel_agreement

RATERS, ITEMS, CLASSES, PATIENTS = 10, 18_365, 15, 200
GOAL_SECONDS = 5.0


def make_panel(seed: int = 2019):
    """Raters who agree with a hidden truth 75 % of the time; a share missing or declined."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(CLASSES, 0.7))
    truth = rng.choice(CLASSES, size=ITEMS, p=shares)
    right = rng.random((ITEMS, RATERS)) < 0.75
    codes = np.where(right, truth[:, None], rng.choice(CLASSES, size=(ITEMS, RATERS), p=shares))
    table = [[f"C{code:02d}" for code in row] for row in codes]
    gaps = rng.random((ITEMS, RATERS))
    for item, rater in zip(*np.nonzero(gaps < 0.05), strict=True):
        table[item][rater] = None
    for item, rater in zip(*np.nonzero((gaps >= 0.05) & (gaps < 0.06)), strict=True):
        table[item][rater] = CANNOT_CLASSIFY
    patients = [f"P{index % PATIENTS}" for index in range(ITEMS)]
    return codes, table, patients


def bare_library(codes: np.ndarray, table) -> None:
    numeric = np.array(
        [[np.nan if x in (None, CANNOT_CLASSIFY) else float(x[1:]) for x in row] for row in table]
    )
    counts = np.stack([(codes == c).sum(axis=1) for c in range(CLASSES)], axis=1)
    fleiss_kappa(counts)
    krippendorff.alpha(reliability_data=numeric.T, level_of_measurement="nominal")
    for first in range(RATERS):
        for second in range(first + 1, RATERS):
            both = ~np.isnan(numeric[:, first]) & ~np.isnan(numeric[:, second])
            pair = np.zeros((CLASSES, CLASSES))
            np.add.at(
                pair, (numeric[both, first].astype(int), numeric[both, second].astype(int)), 1
            )
            cohens_kappa(pair, return_results=False)


def best(repeats: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    codes, table, patients = make_panel()
    complete = [[f"C{code:02d}" for code in row] for row in codes]
    raters = [f"rater-{index + 1}" for index in range(RATERS)]

    panel_s, result = best(
        args.repeats, lambda: panel_agreement(table, raters, clusters=patients, replicates=1000)
    )
    complete_s, complete_result = best(
        args.repeats, lambda: panel_agreement(complete, raters, replicates=1000)
    )
    bare_s, _ = best(args.repeats, lambda: bare_library(codes, table))
    tracemalloc.start()
    panel_agreement(table, raters, clusters=patients, replicates=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    print(f"{RATERS} raters x {ITEMS:,} items, {CLASSES} classes, {PATIENTS} patients")
    print(
        f"panel report (5 % missing, 1 % declined; bootstrap over patients): {panel_s:.2f} s; "
        f"alpha {result.krippendorff_alpha:.3f} CI {result.krippendorff_alpha_ci[0]:.3f}-"
        f"{result.krippendorff_alpha_ci[1]:.3f}; Fleiss: {result.fleiss_kappa_reason}"
    )
    print(
        f"panel report, complete table (bootstrap over items): {complete_s:.2f} s; Fleiss kappa "
        f"{complete_result.fleiss_kappa:.3f} (SE {complete_result.fleiss_kappa_se:.4f})"
    )
    print(f"bare library calls (no bootstrap): {bare_s:.2f} s")
    print(
        f"ratio panel / bare: {panel_s / bare_s:.1f} x; peak traced memory {peak / 2**20:.0f} MiB"
    )
    met = "met" if panel_s <= GOAL_SECONDS else "not met"
    print(f"goal: panel report within {GOAL_SECONDS:g} s: {panel_s:.2f} s -> {met}")


if __name__ == "__main__":
    main()
