"""Benchmark: freezing, splitting and exporting a study of the original study's size.

In one run, on a throw-away PostgreSQL database (cytomark_bench_datasets, dropped afterwards):

    end to end   a synthetic study with the public release's class sizes (18,365 patch-only
                 cells, gold labels, 200 patients): `make_dataset` under the 15-class map, a
                 5-fold `patient-kfold` split, and a `csv` export (`run_export`, as the worker
                 runs it), each timed, and their sum;
    baseline     scikit-learn's `StratifiedGroupKFold` alone on the same labels and patients,
                 arrays already in memory;
    patches      an `imagefolder` export of `--images` cells with 400 x 400 PNG patches in media
                 storage: patches written per second, against a plain loop that reads the same
                 stored files and writes them into a zip the same way (stored, not deflated).

Goal: end to end under 5 s. Each figure is the best of `--repeats` (the data set and split are
found again rather than stored twice, so later repeats time `make_dataset` / `make_split` on a
fresh name / seed).

    .venv/bin/python bench/datasets.py [--repeats 3] [--images 1000]
"""

from __future__ import annotations

import argparse
import io
import random
import time
import zipfile
from pathlib import Path

import benchenv
import numpy as np

DB_NAME = "cytomark_bench_datasets"
# Gold class sizes of the public release (domain.md).
CLASS_SIZES = {
    "NGS": 8484, "LYT": 3937, "MYO": 3268, "MON": 1789, "EOS": 424, "NGB": 109, "BAS": 79,
    "EBO": 78, "PMO": 70, "MYB": 42, "MOB": 26, "PMB": 18, "KSC": 15, "MMZ": 15, "LYA": 11,
}  # fmt: skip
PATIENTS = 200


def make_study(name: str, codes: list[str], with_images: bool):
    """A synthetic study: one patch-only cell per code, spread over 200 patients, labelled in
    one gold round; with 400 x 400 PNG patches in media storage when `with_images`."""
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from PIL import Image

    from annotator.annotation import gold_round_for
    from annotator.models import Cell, Label, Patient, Study, TaxonNode
    from annotator.taxonomy import DEFAULT_TAXONOMY_FILE, load_taxonomy_file

    taxonomy = load_taxonomy_file(DEFAULT_TAXONOMY_FILE).taxonomy
    study = Study.objects.create(name=name, title=name, taxonomy=taxonomy)
    user, _ = get_user_model().objects.get_or_create(username="bench-examiner")
    patients = [
        Patient.objects.get_or_create(code=f"B-{n:03d}", defaults={"cohort": "AML"})[0]
        for n in range(PATIENTS)
    ]
    rng = random.Random(2019)
    noise = np.random.default_rng(0)
    cells = []
    for index, code in enumerate(codes):
        patch = ""
        if with_images:
            pixels = noise.integers(150, 256, size=(400, 400, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG", compress_level=3)
            stored = f"patch-cells/{name}/{index}.png"
            patch = default_storage.save(stored, ContentFile(buffer.getvalue()))
        cells.append(
            Cell(
                study=study,
                patch=patch,
                external_id=f"{code}/{index}",
                patient=patients[rng.randrange(PATIENTS)],
            )
        )
    cells = Cell.objects.bulk_create(cells, batch_size=2000)
    nodes = {n.code: n for n in TaxonNode.objects.filter(taxonomy=taxonomy)}
    gold = gold_round_for(study, user)
    Label.objects.bulk_create(
        (
            Label(cell=cell, round=gold, node=nodes[code], rater=user)
            for cell, code in zip(cells, codes, strict=True)
        ),
        batch_size=2000,
    )
    return study, user


def best(repeats: int, action) -> tuple[float, object]:
    fastest, result = float("inf"), None
    for attempt in range(repeats):
        started = time.perf_counter()
        result = action(attempt)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest, result


def plain_zip_loop(names: list[str], target: Path) -> None:
    """The baseline: read each stored patch and store it in a zip, nothing else."""
    from django.core.files.storage import default_storage

    with zipfile.ZipFile(target, "w") as archive:
        for index, name in enumerate(names):
            with default_storage.open(name, "rb") as handle:
                archive.writestr(f"p/{index}.png", handle.read(), compress_type=zipfile.ZIP_STORED)


def run(args) -> None:
    with benchenv.django_in_process(DB_NAME, args.redis_db) as tmp:
        from sklearn.model_selection import StratifiedGroupKFold

        from datasets import classmaps, exports, splits, versions

        print("making the synthetic studies ...", flush=True)
        codes = [code for code, size in CLASS_SIZES.items() for _ in range(size)]
        random.Random(2019).shuffle(codes)
        study, user = make_study("bench-datasets", codes, with_images=False)
        class_map, _ = classmaps.save_class_map(study, "aml-15", classmaps.propose(study), user)
        assert len(class_map.classes) == 15, class_map.classes

        freeze_s, dataset = best(
            args.repeats,
            lambda n: versions.make_dataset(study, f"all-{n}", user, class_map=class_map)[0],
        )
        split_s, split = best(
            args.repeats,
            lambda n: splits.make_split(dataset, "patient-kfold", user, k=5, seed=n)[0],
        )
        csv_s, _ = best(
            args.repeats,
            lambda n: exports.run_export(exports.request_export(split, "csv", user).pk),
        )
        labels = np.array([row.class_name for row in dataset.rows()])
        groups = np.array([row.patient for row in dataset.rows()])
        sklearn_s, _ = best(
            args.repeats,
            lambda n: [
                test
                for _, test in StratifiedGroupKFold(5, shuffle=True, random_state=n).split(
                    np.zeros(len(labels)), labels, groups
                )
            ],
        )

        # Patches: an imagefolder export of a study whose cells all have 400 px patches.
        image_study, _ = make_study("bench-images", codes[: args.images], with_images=True)
        image_map, _ = classmaps.save_class_map(
            image_study, "aml-15", classmaps.propose(image_study, threshold=0), user
        )
        image_version, _ = versions.make_dataset(image_study, "images", user, class_map=image_map)
        image_split, _ = splits.make_split(image_version, "stratified-kfold", user, k=2, seed=0)
        export_s, export = best(
            args.repeats,
            lambda n: exports.run_export(
                exports.request_export(image_split, "imagefolder", user).pk
            ),
        )
        assert export.status == "done", export.error
        from annotator.models import Cell

        names = list(
            Cell.objects.filter(study=image_study).order_by("pk").values_list("patch", flat=True)
        )
        plain_s, _ = best(args.repeats, lambda n: plain_zip_loop(names, Path(tmp) / "plain.zip"))

    total = freeze_s + split_s + csv_s
    print(
        f"\n{len(dataset.manifest)} cells, {PATIENTS} patients, 15 classes; "
        f"best of {args.repeats}\n"
    )
    print(f"{'step':62} {'seconds':>8}")
    for name, seconds in [
        ("make_dataset (manifest, hash, counts) under the 15-class map", freeze_s),
        ("make_split patient-kfold k=5 (folds, warnings, patient check, hash)", split_s),
        ("csv export (zip with manifest.csv and dataset.json, stored)", csv_s),
        ("end to end", total),
        ("baseline: scikit-learn StratifiedGroupKFold alone, same data", sklearn_s),
    ]:
        print(f"{name:62} {seconds:8.3f}")
    print(f"\nend to end: {total / sklearn_s:.2f} x scikit-learn's split alone (goal: under 5 s)")
    n = len(names)
    print(
        f"\nimagefolder export of {n} patches (400 x 400 PNG): {n / export_s:,.0f} patches/s; "
        f"plain read-and-zip loop: {n / plain_s:,.0f} patches/s "
        f"({(n / export_s) / (n / plain_s):.2f} x its rate)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000, help="cells with 400 px patches")
    parser.add_argument("--redis-db", type=int, default=12)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
