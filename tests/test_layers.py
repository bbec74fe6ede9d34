"""The import graph between the project's packages follows the architecture.

`mltasks -> datasets -> annotator`, every app may use `core`, `core` imports no app. Between
apps only models and public domain functions are imported: never another app's web layer
(api, views, admin, tasks, management commands, template tags) or a private name.
Run `python tests/test_layers.py` to print the graph.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("annotator", "datasets", "mltasks")
PACKAGES = ("core", *APPS)
# Which packages each package may import (besides itself and third-party code).
ALLOWED = {
    "core": set(),
    "annotator": {"core"},
    "datasets": {"core", "annotator"},
    "mltasks": {"core", "annotator", "datasets"},
}
# Modules of an app that are its edges, not its public domain: no other app imports them.
WEB_LAYER = ("api", "views", "admin", "tasks", "management", "templatetags", "apps", "migrations")


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _resolved(module: str, target: str, node: ast.ImportFrom):
    """`from pkg import name` imports the module pkg.name where there is one, else a name."""
    names = []
    for alias in node.names:
        inner = ROOT.joinpath(*target.split("."), alias.name)
        if inner.with_suffix(".py").exists() or inner.is_dir():
            yield module, f"{target}.{alias.name}", [], node.lineno
        else:
            names.append(alias.name)
    if names:
        yield module, target, names, node.lineno


def module_imports(module: str, text: str, is_package: bool = False):
    """(importing module, imported module, names, line) for each import in one module's text."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield module, alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield from _resolved(module, _absolute(module, node, is_package), node)


def imports() -> list[tuple[str, str, list[str], int]]:
    """Every import of a project package by a project module."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                text = path.read_text()
                found.extend(module_imports(_module_of(path), text, path.name == "__init__.py"))
    return [row for row in found if row[1].split(".")[0] in PACKAGES]


def problems(rows=None) -> list[str]:
    """What breaks the rules, in words; `rows` defaults to the whole project's imports."""
    found = []
    for importer, target, names, line in imports() if rows is None else rows:
        source, destination = importer.split(".")[0], target.split(".")[0]
        if source == destination:
            continue
        where = f"{importer}:{line} imports {target}"
        if destination not in ALLOWED[source]:
            found.append(f"{where}: {source} may not depend on {destination}")
            continue
        if destination == "core":
            continue
        inner = target.split(".")[1:]
        if inner and inner[0] in WEB_LAYER:
            found.append(f"{where}: another app's web layer ({inner[0]})")
        private = [name for name in names if name.startswith("_")]
        if private or any(part.startswith("_") for part in inner):
            found.append(f"{where}: private name {', '.join(private) or target}")
    return found


def graph() -> dict[str, set[str]]:
    """importing package -> the other packages' modules it imports."""
    edges = defaultdict(set)
    for importer, target, _, _ in imports():
        if importer.split(".")[0] != target.split(".")[0]:
            edges[importer.split(".")[0]].add(target)
    return edges


def test_packages_import_only_what_the_architecture_allows():
    assert problems() == []


def test_the_check_sees_what_breaks_the_rules():
    """The check is not blind: planted imports of each kind are reported, allowed ones not."""
    planted = (
        "from annotator.views import home\n"
        "from datasets.splits import _carve, samples\n"
        "from mltasks import runs\n"
        "from annotator.models import Cell\n"
        "from core import leases\n"
    )
    assert problems(list(module_imports("datasets.probe", planted))) == [
        "datasets.probe:1 imports annotator.views: another app's web layer (views)",
        "datasets.probe:3 imports mltasks.runs: datasets may not depend on mltasks",
    ]
    assert problems(list(module_imports("mltasks.probe", planted))) == [
        "mltasks.probe:1 imports annotator.views: another app's web layer (views)",
        "mltasks.probe:2 imports datasets.splits: private name _carve",
    ]
    assert problems(list(module_imports("core.probe", "from annotator import access\n"))) == [
        "core.probe:1 imports annotator.access: core may not depend on annotator"
    ]


if __name__ == "__main__":
    for package, targets in sorted(graph().items()):
        print(f"{package} -> " + ", ".join(sorted(targets)))
    for problem in problems():
        print("PROBLEM", problem)
