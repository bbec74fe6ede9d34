"""The web process, the Celery app and the commands that do not train never import torch; the
web process and the Celery app not matplotlib either (it is imported where a report is drawn:
the agreement page on first use, `agreement_report`, a training run's report). Each check runs
in a fresh interpreter and names the import chain of the first module that pulls one in. The
device a run trains on is decided by the training worker, where torch is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from mltasks import run_config, runs
from mltasks.models import TrainingRun

from .conftest import client_for

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "matplotlib", "mlflow", "onnx", "onnxruntime")
# Commands that train or predict: the only ones allowed to import torch.
TRAINING_COMMANDS = {"train", "preannotate"}

# Records who first imports each heavy module (the import goes ahead), runs the scenario given
# as argv[1], then prints {module: the project's source lines that led to its first import}.
PROBE = textwrap.dedent(
    """
    import json, os, sys, traceback
    HEAVY = set(json.loads(sys.argv[2]))
    ROOT = os.getcwd() + os.sep
    first = {}

    class Recorder:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in HEAVY and top not in first:
                first[top] = [
                    f"{frame.filename}:{frame.lineno}"
                    for frame in traceback.extract_stack()[:-1]
                    if frame.filename.startswith(ROOT) and ".venv" not in frame.filename
                ]
            return None

    sys.meta_path.insert(0, Recorder())
    import django
    django.setup()
    scenario = sys.argv[1]
    if scenario == "web":
        from django.template import engines
        from django.urls import get_resolver

        import config.urls
        import config.wsgi

        def walk(resolver):
            for pattern in resolver.url_patterns:
                if hasattr(pattern, "url_patterns"):
                    walk(pattern)
                else:
                    pattern.callback
        walk(get_resolver())
        for status in (400, 403, 404, 500):
            get_resolver().resolve_error_handler(status)
        for engine in engines.all():
            engine.engine.template_libraries
    elif scenario == "celery":
        from config.celery import app

        app.loader.import_default_modules()
        assert "mltasks.tasks.train" in app.tasks
    elif scenario == "check":
        from django.core.management import execute_from_command_line

        execute_from_command_line(["manage.py", "check"])
    else:
        from django.core.management import get_commands, load_command_class

        commands = get_commands()
        for name in json.loads(scenario):
            load_command_class(commands[name], name)
    print(json.dumps(first))
    """
)


def _first_imports(scenario: str) -> dict[str, list[str]]:
    found = subprocess.run(
        [sys.executable, "-c", PROBE, scenario, json.dumps(HEAVY)],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout.strip().splitlines()[-1])


def _chains(first: dict[str, list[str]]) -> str:
    return "\n".join(f"{module}: " + " -> ".join(stack) for module, stack in first.items())


def test_the_urlconf_wsgi_application_and_template_tags_import_no_torch():
    first = _first_imports("web")
    assert not first, _chains(first)


def test_manage_py_check_imports_no_torch():
    first = _first_imports("check")
    assert not first, _chains(first)


def test_the_celery_app_with_all_its_tasks_imports_no_torch():
    """A worker imports every app's tasks; only running a training task brings torch in."""
    first = _first_imports("celery")
    assert not first, _chains(first)


def test_commands_that_do_not_train_import_no_torch():
    from django.core.management import get_commands

    project = {
        name for name, app in get_commands().items() if app in ("annotator", "datasets", "mltasks")
    }
    assert project >= TRAINING_COMMANDS
    first = _first_imports(json.dumps(sorted(project - TRAINING_COMMANDS)))
    assert "torch" not in first, _chains(first)


def test_a_training_command_does_import_torch():
    """The probe sees a torch import when there is one."""
    first = _first_imports(json.dumps(["preannotate"]))
    assert "torch" in first and any("mltasks/inference.py" in frame for frame in first["torch"])


def test_a_run_is_estimated_for_the_device_its_config_names_the_cpu_for_auto():
    for device, estimated in (("auto", "cpu"), ("cpu", "cpu"), ("cuda", "cuda")):
        config = run_config.load_config({"device": device})
        assert run_config.estimated_device_type(config) == estimated


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_no_cuda = pytest.mark.skipif(
    _has_cuda(), reason="the refusal of device cuda is about a machine without CUDA"
)


@needs_no_cuda
@pytest.mark.django_db
def test_a_cuda_run_is_queued_by_the_web_and_refused_by_a_worker_without_cuda(
    split, data_scientist
):
    """The web process cannot know the training worker's device: it queues the run, and the
    worker that has no CUDA fails it, saying why."""
    response = client_for(data_scientist).post(
        "/api/v1/training-runs/",
        {"split": split.pk, "config": {"image_size": 32, "device": "cuda"}},
        format="json",
    )
    assert response.status_code == 202, response.json()
    run = runs.execute(response.json()["id"])
    assert run.status == TrainingRun.Status.FAILED
    assert "device cuda was asked for, but this machine has no CUDA" in run.error
    assert not run.models.exists()


@needs_no_cuda
@pytest.mark.django_db
def test_the_train_command_refuses_cuda_here_before_it_makes_a_run(split):
    with pytest.raises(CommandError, match="device cuda was asked for, but this machine has no"):
        call_command("train", "--split", str(split.pk), "--set", "device=cuda")
    assert not TrainingRun.objects.exists()
