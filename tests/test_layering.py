"""Layers point one way: every lmforge import (function-level ones included) follows LAYERS.

The order is `cli`/`serve` -> loading (`presets`, `api`, the run folder) -> `interop` ->
`models` -> `layers`; `generation` and `training` sit on `models`, `data` on `tokenizers`.
"""

import ast
import graphlib
from pathlib import Path

import pytest

import lmforge

PACKAGE = Path(lmforge.__file__).parent

# Modules anyone may import: they import nothing of lmforge's but each other.
BASE = {"lmforge", "errors", "device", "files", "progress", "system"}
# Which layers a module may import; its own layer always. A module outside every entry is an
# error: place a new one here.
LOADING = {"presets", "api", "runs"}
LAYERS = {
    "base": set(),
    "tokenizers": set(),
    "data": {"tokenizers"},
    "layers": set(),
    "models": {"layers", "tokenizers"},
    "generation": {"models", "layers", "tokenizers"},
    "interop": {"models", "layers", "tokenizers"},
    "loading": {"interop", "models", "layers", "tokenizers", "generation"},
    "evaluate": {"models", "layers", "tokenizers", "generation", "data"},
    "inspect": {"models", "layers", "tokenizers", "generation", "data", "evaluate"},
    "training": {
        *("loading", "interop", "models", "layers", "tokenizers", "generation", "data"),
        "evaluate",
    },
    "serve": {
        *("loading", "interop", "models", "layers", "tokenizers", "generation", "data"),
        *("evaluate", "inspect"),
    },
    "cli": {
        *("serve", "training", "loading", "interop", "models", "layers", "tokenizers"),
        *("generation", "data", "evaluate", "inspect"),
    },
}
# Imports against the order that are kept on purpose, each with its reason.
ALLOWED = {
    ("lmforge.models.base", "lmforge.generation.generate"): (
        "model.generate() is the README's shortcut to generate(); generation never imports models"
    ),
}


def _layer(module: str) -> str | None:
    parts = module.split(".")[1:]
    if not parts or parts[0] in BASE:
        return "base"
    if parts[0] == "__main__":
        return "cli"
    if parts[0] in LOADING:
        return "loading"
    return parts[0] if parts[0] in LAYERS else None


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("lmforge", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(module: str, path: Path, modules) -> set[str]:
    """Every lmforge module `module` imports, at the top or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lmforge"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "lmforge":
                continue
            for alias in node.names:  # `from lmforge.inspect import attention` names a module
                sub = f"{name}.{alias.name}"
                found.add(sub if sub in modules else name)
    return found - {module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_module_sits_in_a_layer():
    unplaced = sorted(m for m in _graph() if _layer(m) is None)
    assert not unplaced, f"{unplaced}: place these packages in LAYERS of tests/test_layering.py"


def _violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in sorted(graph.items()):
        mine = _layer(module)
        for other in sorted(imported):
            theirs = _layer(other)
            if theirs in (mine, "base") or theirs in LAYERS.get(mine, set()):
                continue
            if (module, other) in ALLOWED:
                continue
            may = ", ".join(sorted(LAYERS.get(mine, set()) | {"base"}))
            wrong.append(f"{module} imports {other}: {mine} may import only {may}")
    return wrong


def test_imports_follow_the_layer_order():
    wrong = _violations(_graph())
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_a_violation_names_the_module_the_import_and_the_rule():
    wrong = _violations(
        {
            "lmforge.models.gpt": {"lmforge.training.trainer", "lmforge.layers.attention"},
            "lmforge.layers.heads": {"lmforge.models.gpt"},
            "lmforge.generation.engine": {"lmforge.training.checkpoint"},
            "lmforge.api": {"lmforge.training.checkpoint", "lmforge.errors"},
        }
    )
    assert wrong == [
        "lmforge.api imports lmforge.training.checkpoint: loading may import only base, "
        "generation, interop, layers, models, tokenizers",
        "lmforge.generation.engine imports lmforge.training.checkpoint: generation may import "
        "only base, layers, models, tokenizers",
        "lmforge.layers.heads imports lmforge.models.gpt: layers may import only base",
        "lmforge.models.gpt imports lmforge.training.trainer: models may import only base, "
        "layers, tokenizers",
    ]


def test_no_import_circles():
    try:
        graphlib.TopologicalSorter(_graph()).prepare()
    except graphlib.CycleError as circle:
        pytest.fail("import circle: " + " -> ".join(circle.args[1]))


def test_the_checker_sees_function_level_imports():
    graph = _graph()
    assert "lmforge.generation.generate" in graph["lmforge.models.base"]
    assert _layer("lmforge.models.gpt") == "models" and _layer("lmforge.api") == "loading"
