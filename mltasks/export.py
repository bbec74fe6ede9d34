"""A finished run's fold models for use outside Cytomark: TorchScript and ONNX files that take
a float batch and give class probabilities (the softmax is inside the graph, so a user needs no
code of ours), and a model card per run (JSON and Markdown) that says what goes in and comes out.

The input is what training feeds the network (`augment.to_float`, `training.predict`): RGB,
(N, 3, H, W) float32, pixel / 255 in [0, 1], no mean or standard deviation subtracted, the image
resized (bilinear) to the run's `image_size` square; the batch axis is dynamic.

Each fold's files are made where the run trains, checked (onnxruntime gives PyTorch's
probabilities within `TOLERANCE`) and stored beside its weights:

    training/run-ID/fold-K.pt      the state dict (mltasks.training.load_model)
    training/run-ID/fold-K.ts.pt   TorchScript (torch.jit.load)
    training/run-ID/fold-K.onnx    ONNX, opset OPSET (onnxruntime)
    training/run-ID/model-card.json, model-card.md

Importing this module imports neither torch nor onnxruntime (the web process lists and serves
the files with `download_files`); the functions that export import them.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import PurePosixPath

from django.core.files.storage import default_storage
from django.utils import timezone

from core.errors import DomainError
from core.storage import store_bytes

OPSET = 17
TOLERANCE = 1e-4
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
MODEL_CARD_FORMAT = "cytomark-model-card/1"
NORMALISATION = "RGB, pixel / 255 (0 to 1), no mean or standard deviation subtracted"
RESIZE = "bilinear (PIL Image.BILINEAR) to image_size x image_size, after conversion to RGB"

ONNX_SNIPPET = """\
import numpy as np, onnxruntime
from PIL import Image

session = onnxruntime.InferenceSession("{onnx}", providers=["CPUExecutionProvider"])
image = Image.open("cell.png").convert("RGB").resize(({size}, {size}), Image.BILINEAR)
batch = (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
(probabilities,) = session.run(None, {{"{input}": batch}})
classes = {classes}
print(classes[int(probabilities[0].argmax())], probabilities[0])"""

TORCHSCRIPT_SNIPPET = """\
import torch

model = torch.jit.load("{torchscript}")
probabilities = model(batch_tensor)  # the same (N, 3, {size}, {size}) float32 batch"""


def fold_names(run_id: int, fold: str) -> dict[str, str]:
    """Storage names of one fold's files (the weights' name is the one `runs` stores)."""
    base = f"training/run-{run_id}/fold-{fold}"
    return {"weights": f"{base}.pt", "torchscript": f"{base}.ts.pt", "onnx": f"{base}.onnx"}


def card_names(run_id: int) -> dict[str, str]:
    base = f"training/run-{run_id}/model-card"
    return {"model_card": f"{base}.json", "model_card_markdown": f"{base}.md"}


def download_files(run) -> dict[str, str]:
    """The run's downloadable files, by the name a download asks for (`fold-0.onnx`,
    `model-card.json`): each fold's weights, and the exported files where it has them (a run
    trained before export existed has its weights only)."""
    names = [model.weights for model in run.models.all()]
    exports = (run.report or {}).get("exports") or {}
    for fold in exports.get("folds", []):
        names += [fold["torchscript"], fold["onnx"]]
    names += [exports[key] for key in card_names(run.pk) if key in exports]
    return {PurePosixPath(name).name: name for name in names}


def with_probabilities(classifier):
    """`classifier` (logits) as a module that gives class probabilities, in eval mode."""
    import torch

    class WithProbabilities(torch.nn.Module):
        """The classifier followed by a softmax over its classes."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.classifier = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.classifier(images), dim=1)

    return WithProbabilities(classifier).eval()


def export_fold(weights: bytes, classes: list[str], image_size: int) -> tuple[bytes, bytes]:
    """A stored fold model (`training.state_dict_bytes`) as (TorchScript, ONNX) bytes, the ONNX
    file checked in onnxruntime against PyTorch's probabilities on a random batch (a
    DomainError where they differ; the TorchScript file is PyTorch's own trace)."""
    with warnings.catch_warnings():
        # torch 2.13 calls torch.jit and the TorchScript-based ONNX exporter deprecated; they
        # are what works offline (the newer exporter needs onnxscript), and the files they
        # write load in torch.jit.load and onnxruntime.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "no signature found", UserWarning)
        return _export_fold(weights, classes, image_size)


def _export_fold(weights: bytes, classes: list[str], image_size: int) -> tuple[bytes, bytes]:
    import torch

    from .training import load_model

    model = with_probabilities(load_model(weights, classes))
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, image_size, image_size, generator=generator)
    with torch.no_grad():
        expected = model(example).numpy()
        traced = torch.jit.trace(model, example, check_trace=False)
    script = io.BytesIO()
    torch.jit.save(traced, script)
    graph = io.BytesIO()
    # From the traced module (no second trace), unfolded: onnxruntime folds BatchNorm into the
    # convolutions itself when it loads the file, and the export takes half the time.
    torch.onnx.export(
        traced,
        (example,),
        graph,
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=False,
    )
    torchscript_bytes, onnx_bytes = script.getvalue(), graph.getvalue()
    _check("ONNX", onnx_probabilities(onnx_bytes, example.numpy()), expected)
    return torchscript_bytes, onnx_bytes


def onnx_probabilities(onnx_bytes: bytes, batch):
    """What onnxruntime's CPU provider gives for a float32 (N, 3, H, W) numpy batch."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(None, {INPUT_NAME: batch})
    return probabilities


def _check(kind: str, got, expected) -> None:
    import numpy as np

    difference = float(np.abs(np.asarray(got) - expected).max())
    if not difference <= TOLERANCE:
        raise DomainError(
            f"The {kind} export gives probabilities {difference:.2e} away from PyTorch's "
            f"(more than {TOLERANCE:g}); the run's models were not exported."
        )


def export_run(run, weights: list[tuple[str, str]], report: dict) -> list[str]:
    """Export every fold ((fold, storage name of its weights)) and write the model card; the
    files' names go into `report["exports"]`. Returns the names stored, for the run to remove
    if it fails later; a failure here removes what it stored and raises."""
    classes = list(report["classes"])
    size = run.config["image_size"]
    stored: list[str] = []
    folds = []
    try:
        for fold, weights_name in weights:
            with default_storage.open(weights_name, "rb") as handle:
                payload = handle.read()
            torchscript_bytes, onnx_bytes = export_fold(payload, classes, size)
            names = fold_names(run.pk, fold)
            entry = {"fold": fold, "weights": weights_name, "sha256": {}}
            for kind, data in (
                ("weights", payload),
                ("torchscript", torchscript_bytes),
                ("onnx", onnx_bytes),
            ):
                if kind != "weights":
                    store_bytes(names[kind], data)
                    stored.append(names[kind])
                    entry[kind] = names[kind]
                entry["sha256"][kind] = hashlib.sha256(data).hexdigest()
            folds.append(entry)
        card = model_card(run, report, folds)
        names = card_names(run.pk)
        store_bytes(names["model_card"], json.dumps(card, indent=2).encode())
        stored.append(names["model_card"])
        store_bytes(names["model_card_markdown"], model_card_markdown(card).encode())
        stored.append(names["model_card_markdown"])
    except BaseException:
        for name in stored:
            default_storage.delete(name)
        raise
    report["exports"] = {"folds": folds, **names}
    return stored


def model_card(run, report: dict, folds: list[dict]) -> dict:
    """What a user of the files needs: classes and class map, the data set's and split's
    hashes, the input and output, the per-class figures of the run's report, how to run it."""
    from .models import TrainingRun

    dataset = run.split.dataset
    classes = list(report["classes"])
    size = run.config["image_size"]
    code_version, device = TrainingRun.objects.values_list("code_version", "device").get(pk=run.pk)
    class_map = dataset.class_map
    first = PurePosixPath(folds[0]["onnx"]).name if folds else "fold-0.onnx"
    return {
        "format": MODEL_CARD_FORMAT,
        "run": run.pk,
        "study": dataset.study.name,
        "made_at": timezone.now().isoformat(),
        "code_version": code_version,
        "trained_on": device,
        "network": "ResNeXt-50 32x4d",
        "classes": classes,
        "class_map": None
        if class_map is None
        else {"name": class_map.name, "version": class_map.version, "classes": class_map.classes},
        "dataset": {"name": dataset.name, "version": dataset.version, "sha256": dataset.sha256},
        "split": {"id": run.split_id, "strategy": run.split.strategy, "sha256": run.split.sha256},
        "image_size": size,
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "normalisation": NORMALISATION,
            "resize": RESIZE,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", len(classes)],
            "meaning": "class probabilities (softmax), column i is classes[i]",
        },
        "ensemble": "mean of the folds' probabilities (manage.py predict does this)",
        "onnx_opset": OPSET,
        "folds": folds,
        "per_class": report.get("per_class", {}),
        "config": run.config,
        "usage": {
            "onnxruntime": ONNX_SNIPPET.format(
                onnx=first, size=size, input=INPUT_NAME, classes=classes
            ),
            "torchscript": TORCHSCRIPT_SNIPPET.format(
                torchscript=first.replace(".onnx", ".ts.pt"), size=size
            ),
            "predict": f"manage.py predict --run {run.pk} --images DIR --out predictions.csv",
        },
    }


def _figure(values: dict | None) -> str:
    if not values or values.get("mean") is None:
        return "-"
    sd = values.get("sd")
    return f"{values['mean']:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


def model_card_markdown(card: dict) -> str:
    """The model card for people: the same facts as the JSON, shorter."""
    rows = "\n".join(
        f"| {code} | {values.get('images', '')} | {_figure(values.get('precision'))} | "
        f"{_figure(values.get('sensitivity'))} | {_figure(values.get('specificity'))} |"
        for code, values in card["per_class"].items()
    )
    files = "\n".join(
        f"- fold {fold['fold']}: `{PurePosixPath(fold['onnx']).name}` (ONNX), "
        f"`{PurePosixPath(fold['torchscript']).name}` (TorchScript), "
        f"`{PurePosixPath(fold['weights']).name}` (state dict)"
        for fold in card["folds"]
    )
    size = card["image_size"]
    dataset, split = card["dataset"], card["split"]
    return f"""# Model card: training run {card["run"]} of study {card["study"]}

{card["network"]}, one model per fold; average the folds' probabilities (the ensemble).

- Classes (output order): {", ".join(card["classes"])}
- Data set: {dataset["name"]} v{dataset["version"]}, sha256 `{dataset["sha256"]}`
- Split: {split["strategy"]} (id {split["id"]}), sha256 `{split["sha256"]}`
- Code: {card["code_version"]}; trained on {card["trained_on"]}
- Input `{card["input"]["name"]}`: N x 3 x {size} x {size} float32, {NORMALISATION}; {RESIZE}
- Output `{card["output"]["name"]}`: N x {len(card["classes"])} class probabilities

## Files

{files}

## Per class (mean ± sd over the test folds)

| Class | Images | Precision | Sensitivity | Specificity |
| --- | --- | --- | --- | --- |
{rows}

## Running it

```python
{card["usage"]["onnxruntime"]}
```

Or with Cytomark: `{card["usage"]["predict"]}`.
"""
