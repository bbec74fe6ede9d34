"""The report of a training run, in the form the Munich AML study published: per-class
precision, sensitivity and specificity as mean ± sd over the folds with images per class, the
summed confusion matrix, each yes/no question's ROC curve and AUC with the human raters' points
from the agreement rounds on the same cells, saliency maps, and what is needed to reproduce it.
Plots are PNG files in storage (matplotlib `Figure`, no display needed)."""

from __future__ import annotations

import numpy as np
from django.core.files.storage import default_storage
from matplotlib.figure import Figure

from annotator.models import Label, Round
from core import plots
from core.plots import confusion_figure
from core.storage import store_bytes
from datasets.classmaps import class_groups

from .evaluation import FoldPredictions, fold_summary, group_roc, rater_point
from .training import load_model, saliency


def rater_points(run, test_cells: dict[int, str], groups: dict[str, set[str]]) -> list[dict]:
    """Every other round's sensitivity/specificity on the test cells it labelled, per group."""
    dataset = run.split.dataset
    class_of = dataset.class_map.class_of() if dataset.class_map else {}
    points = []
    rounds = Round.objects.filter(study=dataset.study).exclude(pk=dataset.source_round_id)
    for round_ in rounds.select_related("rater"):
        answers = dict(
            Label.objects.filter(round=round_, cell_id__in=list(test_cells)).values_list(
                "cell_id", "node__code"
            )
        )
        if not answers:
            continue
        cells = sorted(answers)
        truth = [test_cells[cell] for cell in cells]
        said = [None if answers[c] is None else class_of.get(answers[c], answers[c]) for c in cells]
        for group, members in groups.items():
            point = rater_point(truth, said, members)
            if point is not None:
                points.append({"round": round_.name, "kind": round_.kind, "group": group, **point})
    return points


# The network's curve is blue; the human raters' points never are, and their marker says the
# kind of their round.
NETWORK_COLOUR = "#1f77b4"
RATER_COLOURS = ["#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
RATER_MARKERS = {"gold": "*", "blinded": "o", "repeat": "s"}
# How wide the training report (mltasks/report.html) shows its plots at most (its card), and
# its saliency images (`.plot.small`).
REPORT_SHOWN_PX = 1100
SALIENCY_SHOWN_PX = 320


def roc_figure(group: str, roc: dict, points: list[dict]) -> Figure:
    """The network's mean ROC curve of a yes/no question with each human rater's point: the
    raters in their own colours (never the network's), marked by their round's kind."""
    width = 4.6
    text = plots.text_points(width, REPORT_SHOWN_PX, plots.PNG_DPI)
    figure = Figure(figsize=(width, width))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="#bbb", linestyle="--", linewidth=0.8)
    curve = roc.get("mean_curve") or {}
    if curve:
        auc = (roc.get("auc") or {}).get("mean")
        sd = (roc.get("auc") or {}).get("sd")
        label = (
            "network" if auc is None else f"network, AUC {auc:.3f}" + (f" ± {sd:.3f}" if sd else "")
        )
        axes.plot(curve["fpr"], curve["tpr"], color=NETWORK_COLOUR, label=label)
    for index, point in enumerate(points):
        axes.scatter(
            [1 - point["specificity"]],
            [point["sensitivity"]],
            color=RATER_COLOURS[index % len(RATER_COLOURS)],
            marker=RATER_MARKERS.get(point["kind"], "D"),
            s=70,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            label=f"rater: {point['round']} ({point['kind']})",
        )
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("1 - specificity", fontsize=text)
    axes.set_ylabel("sensitivity", fontsize=text)
    axes.tick_params(labelsize=text)
    axes.set_title(f"{group}: network and human raters", fontsize=text)
    axes.legend(fontsize=text, loc="lower right")
    return figure


def saliency_maps(model, data, index: np.ndarray, device, count: int) -> list[tuple[int, bytes]]:
    """|d loss / d input| (max over colour channels) beside each patch, for `count` patches,
    computed in one batch on the device (`training.saliency`)."""
    positions = [int(p) for p in index[:count]]
    if not positions:
        return []
    images = data.batch(positions)
    heats = saliency(model, images, data.labels[positions], device)
    made = []
    for position, patch, heat in zip(positions, images.numpy(), heats, strict=True):
        title = f"cell {data.cell_ids[position]}: {data.classes[data.labels[position]]}"
        made.append((data.cell_ids[position], plots.png(saliency_figure(patch, heat, title))))
    return made


def saliency_figure(patch: np.ndarray, heat: np.ndarray, title: str) -> Figure:
    """The patch and its saliency side by side, titles legible at the size the page shows."""
    width = 6
    text = plots.text_points(width, SALIENCY_SHOWN_PX, plots.PNG_DPI)
    figure = Figure(figsize=(width, width / 2))
    left, right = figure.subplots(1, 2)
    left.imshow(patch)
    left.set_title(title, fontsize=text)
    right.imshow(patch)
    right.imshow(heat, cmap="inferno", alpha=0.6)
    right.set_title("saliency", fontsize=text)
    for axes in (left, right):
        axes.axis("off")
    return figure


def build_report(run, data, results, device, saliency_weights: str) -> dict:
    """The report as JSON-ready data; plot files go to storage (their names under `_files`).
    The saliency maps come from the first fold's model, read back from `saliency_weights`."""

    dataset = run.split.dataset
    classes = data.classes
    folds = [
        FoldPredictions(result.fold, data.labels[result.test_index], result.probabilities)
        for result in results
    ]
    summary = fold_summary(folds, classes)
    groups = class_groups(dataset.study, classes, dataset.class_map)
    test_cells = {data.cell_ids[i]: classes[data.labels[i]] for r in results for i in r.test_index}
    points = rater_points(run, test_cells, groups)
    base = f"training/run-{run.pk}"
    files = {"confusion": f"{base}/confusion.png"}
    confusion = confusion_figure(
        summary["confusion"]["matrix"],
        classes,
        rows="true (gold)",
        columns="predicted",
        shown_px=REPORT_SHOWN_PX,
        px_per_inch=plots.PNG_DPI,
    )
    store_bytes(files["confusion"], plots.png(confusion))
    rocs = {}
    for group, members in sorted(groups.items()):
        # A question that every class (or none) answers "yes" has no ROC curve.
        roc = group_roc(folds, classes, members) if 0 < len(members) < len(classes) else {}
        rocs[group] = {"members": sorted(members), **roc}
        name = f"{base}/roc-{group}.png"
        figure = roc_figure(group, roc, [p for p in points if p["group"] == group])
        store_bytes(name, plots.png(figure))
        files[f"roc-{group}"] = name
    first = results[0]
    with default_storage.open(saliency_weights, "rb") as handle:
        model = load_model(handle.read(), classes)
    saliency = []
    for cell, png in saliency_maps(
        model, data, first.test_index, device, run.config["saliency_samples"]
    ):
        name = f"{base}/saliency-{cell}.png"
        store_bytes(name, png)
        saliency.append({"cell": cell, "file": name})
    return {
        "classes": classes,
        "per_class": summary["per_class"],
        "confusion": summary["confusion"],
        "groups": rocs,
        "raters": points,
        "saliency": saliency,
        "plots": files,
        "folds": [
            {
                "fold": r.fold,
                "epochs": r.epochs,
                "seconds": round(r.seconds, 2),
                "history": r.history,
                **r.parts,
            }
            for r in results
        ],
        "warnings": [
            f"Fold {r.fold}: {note}" for r in results for note in r.parts.get("notes", [])
        ],
        "config": run.config,
        "split": {"id": run.split_id, "strategy": run.split.strategy, "sha256": run.split.sha256},
        "dataset": {"name": dataset.name, "version": dataset.version, "sha256": dataset.sha256},
        "_files": [*files.values(), *(s["file"] for s in saliency)],
    }
