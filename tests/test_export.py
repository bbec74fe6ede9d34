"""Fold models usable outside Cytomark: a finished run's TorchScript and ONNX files give
PyTorch's probabilities, its model card says what they need, they download only for those who
oversee the run, and `manage.py predict` classifies a folder of images with the fold ensemble."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings

import numpy as np
import pytest
import torch
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.test import Client
from PIL import Image

from core.errors import DomainError
from core.storage import store_bytes
from mltasks import export, inference, run_config, runs, training
from mltasks.models import FoldModel, TrainingRun
from mltasks.resnext import resnext50_32x4d

from .conftest import client_for

SMALL = {
    "image_size": 32,
    "batch_size": 16,
    "max_epochs": 1,
    "oversample_to": 8,
    "saliency_samples": 1,
    "threads": 2,
}


def _finished_run(split, folds=("0", "1")) -> TrainingRun:
    """A done run whose fold models are randomly initialised (distinct per fold), published
    as a trained run publishes them: no training, for the tests of what uses the models."""
    config = run_config.load_config(SMALL)
    classes = split.dataset.classes
    run = TrainingRun.objects.create(
        split=split,
        config=config,
        status=TrainingRun.Status.DONE,
        report={"classes": classes, "per_class": {}},
    )
    for seed, fold in enumerate(folds):
        torch.manual_seed(seed)
        state = resnext50_32x4d(num_classes=len(classes)).state_dict()
        payload = training.state_dict_bytes(state, classes, config)
        name = f"training/run-{run.pk}/fold-{fold}.pt"
        store_bytes(name, payload)
        FoldModel.objects.create(
            run=run,
            fold=fold,
            weights=name,
            sha256=hashlib.sha256(payload).hexdigest(),
            classes=classes,
        )
    return run


def _read(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        return handle.read()


@pytest.mark.django_db
def test_a_trained_run_exports_its_folds_and_a_model_card_for_its_overseers(
    split, data_scientist, annotator, outsider, tmp_path, monkeypatch, capsys
):
    run = runs.start_run(split, data_scientist, {**SMALL, "folds": ["0"]})
    run = runs.execute(run.pk)
    assert run.status == "done", run.error
    exports = run.report["exports"]
    (fold,) = exports["folds"]
    assert fold["onnx"] == f"training/run-{run.pk}/fold-0.onnx"
    assert fold["torchscript"] == f"training/run-{run.pk}/fold-0.ts.pt"
    assert exports["model_card"] == f"training/run-{run.pk}/model-card.json"
    classes = split.dataset.classes
    model = run.models.get()
    assert fold["sha256"]["weights"] == model.sha256
    pytorch = export.with_probabilities(training.load_model(_read(model.weights), classes))

    batch = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = pytorch(batch).numpy()
    onnx_bytes = _read(fold["onnx"])
    assert hashlib.sha256(onnx_bytes).hexdigest() == fold["sha256"]["onnx"]
    from_onnx = export.onnx_probabilities(onnx_bytes, batch.numpy())
    assert from_onnx.shape == (5, len(classes))
    np.testing.assert_allclose(from_onnx, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(from_onnx.sum(axis=1), 1, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(io.BytesIO(_read(fold["torchscript"])))
        with torch.no_grad():
            np.testing.assert_allclose(scripted(batch).numpy(), expected, atol=1e-4, rtol=0)

    card = json.loads(_read(exports["model_card"]))
    assert card["classes"] == classes
    assert card["dataset"]["sha256"] == split.dataset.sha256
    assert card["split"]["sha256"] == split.sha256
    assert card["class_map"]["classes"] == split.dataset.class_map.classes
    assert card["per_class"] == run.report["per_class"] and set(card["per_class"]) == set(classes)
    assert card["input"]["shape"] == ["N", 3, 32, 32] and card["image_size"] == 32
    assert card["code_version"] == run.code_version
    assert card["folds"][0]["sha256"]["onnx"] == fold["sha256"]["onnx"]
    # The card's snippet runs as it stands, beside the downloaded file and an image.
    (tmp_path / "fold-0.onnx").write_bytes(onnx_bytes)
    _image(tmp_path / "cell.png", 3)
    monkeypatch.chdir(tmp_path)
    exec(card["usage"]["onnxruntime"], {})
    assert capsys.readouterr().out.split()[0] in classes
    markdown = _read(exports["model_card_markdown"]).decode()
    assert split.sha256 in markdown and "| MYO |" in markdown

    api = client_for(data_scientist)
    url = f"/api/v1/training-runs/{run.pk}/download/"
    got = api.get(url, {"file": "fold-0.onnx"})
    assert got.status_code == 200 and b"".join(got.streaming_content) == onnx_bytes
    assert 'filename="run-' in got["Content-Disposition"]
    card_response = api.get(url, {"file": "model-card.json"})
    assert card_response["Content-Type"] == "application/json"
    assert json.loads(b"".join(card_response.streaming_content))["run"] == run.pk
    assert api.get(url, {"file": "fold-0.ts.pt"}).status_code == 200
    missing = api.get(url, {"file": "../../settings.py"})
    assert missing.status_code == 404 and "no file" in missing.json()["detail"]
    for stranger in (annotator, outsider):
        assert client_for(stranger).get(url, {"file": "fold-0.onnx"}).status_code == 404

    browser = Client()
    browser.force_login(data_scientist)
    page = browser.get(f"/training/{run.pk}/").content.decode()
    assert f"{url}?file=fold-0.onnx" in page and f"{url}?file=model-card.md" in page
    default_storage.delete(exports["model_card_markdown"])
    gone = api.get(url, {"file": "model-card.md"})
    assert gone.status_code == 404 and "missing from storage" in gone.json()["detail"]


@pytest.mark.django_db
def test_a_failed_export_removes_the_files_it_stored_and_says_why(split):
    run = _finished_run(split)
    weights = dict(run.models.values_list("fold", "weights"))
    # Fold 1's file holds a model of other classes: fold 0 exports, then fold 1 cannot.
    store_bytes(weights["1"], training.state_dict_bytes({}, ["NGS", "LYT"], run.config))
    report = {"classes": split.dataset.classes, "per_class": {}}
    with pytest.raises(DomainError, match="not the expected"):
        export.export_run(run, sorted(weights.items()), report)
    assert "exports" not in report
    left = default_storage.listdir(f"training/run-{run.pk}")[1]
    assert sorted(left) == ["fold-0.pt", "fold-1.pt"]


def _image(path, seed: int, size=(40, 36)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.mark.django_db
def test_predict_writes_the_fold_ensembles_probabilities_for_every_image(split, tmp_path):
    run = _finished_run(split)
    folder = tmp_path / "new-study"
    (folder / "patient-2").mkdir(parents=True)
    files = ["a.png", "b.jpg", "patient-2/c.tif", "patient-2/d.PNG"]
    for seed, name in enumerate(files):
        _image(folder / name, seed)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "preds.csv"
    printed = io.StringIO()
    call_command(
        "predict",
        "--run",
        str(run.pk),
        "--images",
        str(folder),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "3",
        stdout=printed,
    )
    assert f"4 image(s) classified by the 2 fold model(s) of run {run.pk}" in printed.getvalue()
    classes = split.dataset.classes
    with out.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file", "predicted", *classes]
    assert [row[0] for row in rows[1:]] == sorted(files)
    probabilities = np.array([[float(p) for p in row[2:]] for row in rows[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    assert [row[1] for row in rows[1:]] == [classes[i] for i in probabilities.argmax(axis=1)]

    # The ensemble is the mean of the folds' own probabilities.
    models = inference.load_models(run)
    pixels = np.stack(
        [inference.resized_pixels(Image.open(folder / name), 32) for name in sorted(files)]
    )
    each = [inference.ensemble_probabilities([model], pixels) for model in models]
    assert not np.allclose(each[0], each[1], atol=1e-3)
    np.testing.assert_allclose(probabilities, np.mean(each, axis=0), atol=1e-6)


@pytest.mark.django_db
def test_predict_prepares_images_as_training_does(split):
    run = _finished_run(split, folds=("0",))
    name = split.dataset.study.cells.exclude(patch="").first().patch.name
    with default_storage.open(name, "rb") as handle:
        picture = Image.open(handle)
        picture.load()
    assert np.array_equal(inference.resized_pixels(picture, 32), training.decode_patch(name, 32))
    models = inference.load_models(run)
    from_pil = inference.ensemble_predict(run, [picture], models=models)
    from_array = inference.ensemble_predict(
        run, [np.asarray(picture.convert("RGB"))], models=models
    )
    np.testing.assert_allclose(from_pil, from_array, atol=1e-6)


@pytest.mark.django_db
def test_predict_refuses_a_bad_folder_or_an_unfinished_run(split, data_scientist, tmp_path):
    run = _finished_run(split, folds=("0",))
    out = str(tmp_path / "preds.csv")

    def predict(*args):
        call_command("predict", "--out", out, *args)

    with pytest.raises(CommandError, match="no such folder"):
        predict("--run", str(run.pk), "--images", str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CommandError, match="no png, jpg or tif files"):
        predict("--run", str(run.pk), "--images", str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(CommandError, match=r"Cannot read the image .*x\.png"):
        predict("--run", str(run.pk), "--images", str(tmp_path / "broken"))
    queued = runs.start_run(split, data_scientist, SMALL)
    with pytest.raises(CommandError, match=f"Run {queued.pk} is queued; only a finished run"):
        predict("--run", str(queued.pk), "--images", str(tmp_path / "broken"))
    with pytest.raises(CommandError, match="No training run 999999"):
        predict("--run", "999999", "--images", str(tmp_path))
    with pytest.raises(CommandError, match="batch size must be at least 1"):
        _image(tmp_path / "empty" / "ok.png", 0)
        predict("--run", str(run.pk), "--images", str(tmp_path / "empty"), "--batch-size", "0")
    if not torch.cuda.is_available():
        with pytest.raises(CommandError, match="device cuda was asked for, but this machine"):
            predict("--run", str(run.pk), "--images", str(tmp_path / "empty"), "--device", "cuda")
    assert not (tmp_path / "preds.csv").exists()
