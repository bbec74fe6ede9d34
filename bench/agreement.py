"""Benchmark: importing the public AML annotation file, and its whole agreement report.

In one run, on a throw-away PostgreSQL database (cytomark_bench_agreement, dropped afterwards):

    import    `import_tcia_aml` of the real file (18,365 lines -> 18,365 cells, 22,175 labels with
              their history, three rounds), then the same file again (nothing to change);
    report    `build_report` for the study: every default pair (gold against both re-annotations,
              the repeat against the first), each with kappa, its asymptotic CI, the confusion
              matrix, per-class and per-group figures, reading the labels from the database;
    page      the report's HTML page with its plots (matplotlib SVG), for scale;

beside the baseline of the report: scikit-learn's `cohen_kappa_score` alone on the same pairs,
given the answers already in memory (no database, no CI, no matrix). Goals: import under 10 s,
report under 2 s. Each timing is the best of `--repeats`.

    .venv/bin/python bench/agreement.py [--repeats 5] [--file PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import benchenv

DB_NAME = "cytomark_bench_agreement"
RELEASE = Path("tcia-aml-cytomorphology", "annotations.dat")


def default_file() -> Path:
    """The workplace's copy: under CYTOMARK_SHARED_DATA, or a shared/data beside a parent."""
    if os.environ.get("CYTOMARK_SHARED_DATA"):
        return Path(os.environ["CYTOMARK_SHARED_DATA"]) / RELEASE
    for parent in benchenv.ROOT.parents:
        if (parent / "shared" / "data" / RELEASE).is_file():
            return parent / "shared" / "data" / RELEASE
    return Path("/work/shared/data") / RELEASE


def best_of(repeats: int, action) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    return best, result


def column_pairs(path: Path) -> list[tuple[list[str], list[str]]]:
    """The answers of the three pairs of the file's columns, both sides classified."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    pairs = []
    for a, b in ((1, 2), (1, 3), (2, 3)):
        kept = [r for r in rows if not {r[a], r[b]} & {"nan", "UNC"}]
        pairs.append(([r[a] for r in kept], [r[b] for r in kept]))
    return pairs


def sklearn_kappas(pairs) -> list[float]:
    """The baseline: scikit-learn's kappa of each pair, nothing else."""
    from sklearn.metrics import cohen_kappa_score

    return [cohen_kappa_score(left, right) for left, right in pairs]


def run(args) -> None:
    with benchenv.django_in_process(DB_NAME, args.redis_db):
        from annotator import report_plots, reports
        from datasets.importers import import_tcia_aml

        started = time.perf_counter()
        first = import_tcia_aml(args.file, "bench-aml")
        import_seconds = time.perf_counter() - started
        started = time.perf_counter()
        again = import_tcia_aml(args.file, "bench-aml")
        reimport_seconds = time.perf_counter() - started
        assert first.cells_created == first.lines and not again.changed_anything

        study = first.study
        reports.build_report(study)  # warm-up: the first query plans, imports
        report_seconds, report = best_of(args.repeats, lambda: reports.build_report(study))
        page_seconds, _ = best_of(
            args.repeats, lambda: report_plots.page_context(reports.build_report(study))
        )
        # The baseline gets the answers already in memory: no database, no parsing.
        pairs = column_pairs(Path(args.file))
        sklearn_seconds, kappas = best_of(args.repeats, lambda: sklearn_kappas(pairs))
        for comparison, expected in zip(report.comparisons, kappas, strict=True):
            assert abs(comparison.agreement.kappa - expected) < 1e-12, "kappas differ"

    print(f"\n{first.lines} lines of {Path(args.file).name}; best of {args.repeats}\n")
    print(f"{'step':58} {'seconds':>8}")
    rows = [
        ("import (cells, labels, history, rounds)", import_seconds),
        ("import again (nothing changes)", reimport_seconds),
        (
            f"report: {len(report.comparisons)} default pairs, kappa + CI, matrix, groups",
            report_seconds,
        ),
        ("report + HTML page context with its plots", page_seconds),
        ("baseline: scikit-learn cohen_kappa_score alone, same pairs", sklearn_seconds),
    ]
    for name, seconds in rows:
        print(f"{name:58} {seconds:8.3f}")
    print(
        f"\nreport: {report_seconds / sklearn_seconds:.2f} x scikit-learn's time for the kappas "
        f"alone (goal: report under 2 s, import under 10 s)"
    )
    for comparison in report.comparisons:
        result = comparison.agreement
        low, high = result.kappa_ci
        print(
            f"  {comparison.a.name} vs {comparison.b.name}: n={result.n} "
            f"excluded={result.excluded_cannot_classify} kappa={result.kappa:.3f} "
            f"[{low:.3f}, {high:.3f}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--file", default=str(default_file()), help="annotations.dat")
    parser.add_argument("--redis-db", type=int, default=12)
    args = parser.parse_args()
    if not Path(args.file).is_file():
        sys.exit(f"No annotation file at {args.file}; pass --file.")
    run(args)


if __name__ == "__main__":
    main()
