"""The page scripts' contract with the views and the static files.

Every URL a script calls comes from its page's json_script config, built with reverse() (the
scripts spell none), the scripts load as ES modules, and the production storage rewrites the
modules' imports to the hashed names that nginx caches for a year. The scripts' own logic (save
queue, undo, HTTP client, taxonomy) is tested under Node: frontend/tests, `make jstest`.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path, PurePosixPath

from django.urls import resolve, reverse

from annotator import rounds
from core.url_templates import url_template

from .test_settings import PRODUCTION, ROOT, run_manage

SCRIPTS = ROOT / "frontend" / "static" / "js"
TEMPLATES = ROOT / "frontend" / "templates"
IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s*["']([^"']+)["'];""", re.MULTILINE)


def page_config(response, element_id: str) -> dict:
    """The JSON a view rendered into the page with json_script."""
    assert response.status_code == 200
    found = re.search(
        rf'<script id="{element_id}" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.DOTALL,
    )
    assert found, f"no {element_id} on the page"
    return json.loads(found.group(1))


def fill(template: str, **values) -> str:
    """What urlFor (static/js/lib/http.js) makes of a template."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    assert "{" not in template, template
    return template


def test_the_page_scripts_spell_no_url():
    scripts = sorted(SCRIPTS.rglob("*.js"))
    assert {p.name for p in scripts} >= {"annotate.js", "queue.js", "http.js", "save-queue.js"}
    for script in scripts:
        text = script.read_text()
        for literal in ("/api/", "/studies/", "/queue/", "/training/"):
            assert literal not in text, f"{script.relative_to(ROOT)} spells {literal}"


def test_the_pages_load_their_scripts_as_modules_whose_imports_exist():
    tags = re.findall(r"<script[^>]*src=\"\{% static 'js/[^']+' %\}\"[^>]*>", _all_templates())
    assert len(tags) == 7
    assert all('type="module"' in tag for tag in tags), tags
    for script in SCRIPTS.rglob("*.js"):
        for target in IMPORT.findall(script.read_text()):
            assert target.startswith("./") or target.startswith("../"), target
            assert (script.parent / target).resolve().is_file(), f"{script.name}: {target}"


def _all_templates() -> str:
    return "\n".join(p.read_text() for p in TEMPLATES.rglob("*.html"))


def test_url_template_leaves_placeholders_for_the_script():
    assert url_template("queue-item", 5, "{position}") == "/api/v1/queue/5/items/{position}/"
    assert url_template("queue-answer", "{token}") == "/api/v1/queue/items/{token}/answer/"
    assert url_template("cell-detail", "{id}") == "/api/v1/cells/{id}/"
    assert url_template("queue-item", "{round}", 3) == "/api/v1/queue/{round}/items/3/"
    assert url_template("scan-dzi", 8) == reverse("scan-dzi", args=[8])


def test_the_annotation_screen_names_its_routes(client, annotator, study, scan):
    client.force_login(annotator)
    config = page_config(client.get(f"/studies/{study.name}/scans/{scan.pk}/"), "annotate-config")
    urls = config["urls"]
    assert resolve(urls["cells"]).url_name == "cell-list"
    assert resolve(urls["labels"]).url_name == "label-list"
    assert resolve(fill(urls["cell"], id=12)).url_name == "cell-detail"
    assert resolve(fill(urls["cell"], id=12)).kwargs == {"pk": "12"}
    assert resolve(fill(urls["label"], id=4)).url_name == "label-detail"
    assert urls["dzi"] == reverse("scan-dzi", args=[scan.pk])


def test_the_queue_screen_fills_in_working_urls(client, study, gold_cells, rater, coordinator):
    round_ = rounds.create_blinded_round(
        study, rater, coordinator, mode="per-class", per_class=1, seed=3, name="rita-1"
    )
    client.force_login(rater)
    urls = page_config(client.get(f"/queue/{round_.pk}/"), "queue-config")["urls"]
    state = client.get(urls["round"]).json()
    assert state["first_unanswered"] == 1
    item = client.get(fill(urls["item"], position=1)).json()
    assert item["position"] == 1
    answer = {"node": None, "cannot_classify": True, "seconds_spent": 1.0}
    saved = client.put(
        fill(urls["answer"], token=item["token"]), answer, content_type="application/json"
    )
    assert saved.status_code == 200, saved.content
    assert saved.json()["done"] == 1


def test_the_datasets_page_names_the_url_of_its_exports(client, split, data_scientist):
    from datasets import exports

    export = exports.request_export(split, "csv", data_scientist)
    client.force_login(data_scientist)
    response = client.get(f"/studies/{split.dataset.study.name}/datasets/")
    url = fill(page_config(response, "datasets-config")["urls"]["export"], id=export.pk)
    assert url == reverse("export-detail", args=[export.pk])
    assert client.get(url).json()["status"] == "queued"


def test_the_training_page_names_the_url_of_its_runs(client, split, data_scientist):
    from mltasks.models import TrainingRun

    run = TrainingRun.objects.create(split=split, config={}, created_by=data_scientist)
    client.force_login(data_scientist)
    response = client.get(f"/studies/{split.dataset.study.name}/training/")
    url = fill(page_config(response, "training-config")["urls"]["run"], id=run.pk)
    assert url == reverse("training-run-detail", args=[run.pk])
    assert client.get(url).json()["status"] == "queued"


def test_collectstatic_rewrites_module_imports_to_the_hashed_files(tmp_path):
    """Production's manifest storage: an entry script's imports name the hashed modules, so a
    changed module is never taken from the year-long cache under its plain name."""
    static_root = tmp_path / "static"
    result = run_manage(
        "collectstatic",
        "--noinput",
        SECRET_KEY=secrets.token_urlsafe(64),
        STATIC_ROOT=str(static_root),
        VAR_DIR=str(tmp_path / "var"),
        **PRODUCTION,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    hashed = set(manifest.values())
    checked = 0
    for name in ("js/annotate.js", "js/queue.js", "js/training.js", "js/lib/page.js"):
        served = PurePosixPath(manifest[name])
        imports = IMPORT.findall((static_root / served).read_text())
        assert imports, f"{served} imports nothing"
        for target in imports:
            imported = PurePosixPath(_normalise(served.parent / target))
            assert str(imported) in hashed, f"{served} imports {target}, not a hashed name"
            assert (static_root / Path(imported)).is_file()
            checked += 1
    assert checked >= 10


def _normalise(path: PurePosixPath) -> str:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)
