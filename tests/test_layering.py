"""Layers point one way: every lmforge import (function-level ones included) follows LAYERS.

The order is `cli`/`serve` -> loading (`presets`, `api`) -> `interop` -> `models` -> `layers`;
`generation` and `training` sit on `models`, `data` on `tokenizers`; the base modules (errors,
device, files, the run folder, ...) sit under all of them. No module imports itself round about.
"""

import ast
import graphlib
from pathlib import Path

import pytest

import lmforge

PACKAGE = Path(lmforge.__file__).parent

# Modules anyone may import: they import nothing of lmforge's but each other.
BASE = {"lmforge", "errors", "device", "files", "progress", "system", "run_folder"}
LOADING = {"presets", "api"}
# Which layers a module may import, besides its own and the base. A package missing here fails
# test_every_module_sits_in_a_layer: place a new one.
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
# Imports against the order kept on purpose: (module, function, imported module) -> why. Each
# is a function-level import in a user-facing shortcut; nothing imports it at import time.
ALLOWED = {
    ("lmforge.models.base", "CausalLM.generate", "lmforge.generation.generate"): (
        "model.generate() is the README's shortcut to generate(); generation never imports models"
    ),
    ("lmforge.models.bert", "BertBackbone.from_preset", "lmforge.presets"): (
        "KerasHub-style Family.from_preset(), which examples/bert_imdb.py calls"
    ),
    ("lmforge.models.bert", "BertPreprocessor.from_preset", "lmforge.api"): (
        "KerasHub-style Family.from_preset(), as above"
    ),
    ("lmforge.models.bert", "BertTextClassifier.from_preset", "lmforge.presets"): (
        "KerasHub-style Family.from_preset(), as above"
    ),
    ("lmforge.interop.hf", "__getattr__", "lmforge.api"): (
        "the old import path of convert(), which examples/gpt2_finetune_eli5.py uses"
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


def _imported(node, package: str, modules) -> set[str]:
    """The lmforge modules one import statement names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "lmforge"}
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    if name.split(".")[0] != "lmforge":
        return set()
    # `from lmforge.inspect import attention` names a module, `from lmforge.api import load` not
    return {f"{name}.{a.name}" if f"{name}.{a.name}" in modules else name for a in node.names}


def _edges(module: str, path: Path, modules) -> set[tuple[str, str]]:
    """(function it sits in, or "", imported module) for every lmforge import of `module`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()

    def visit(node, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.update((where, m) for m in _imported(child, package, modules) - {module})
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{where}.{child.name}".lstrip("."))
            else:
                visit(child, where)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def _graph() -> dict[str, set[tuple[str, str]]]:
    modules = _modules()
    return {m: _edges(m, p, modules) for m, p in modules.items()}


def _violations(graph: dict[str, set[tuple[str, str]]]) -> list[str]:
    wrong = []
    for module, edges in sorted(graph.items()):
        mine = _layer(module)
        for where, other in sorted(edges, key=lambda e: (e[1], e[0])):
            theirs = _layer(other)
            if theirs in (mine, "base") or theirs in LAYERS.get(mine, set()):
                continue
            if (module, where, other) in ALLOWED:
                continue
            may = ", ".join(sorted(LAYERS.get(mine, set()) | {"base"}))
            wrong.append(f"{module} imports {other}: {mine} may import only {may}")
    return wrong


def test_every_module_sits_in_a_layer():
    unplaced = sorted(m for m in _graph() if _layer(m) is None)
    assert not unplaced, f"{unplaced}: place these packages in LAYERS of tests/test_layering.py"


def test_imports_follow_the_layer_order():
    wrong = _violations(_graph())
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_circles():
    graph = {
        module: {other for where, other in edges if (module, where, other) not in ALLOWED}
        for module, edges in _graph().items()
    }
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as circle:
        pytest.fail("import circle: " + " -> ".join(circle.args[1]))


def test_every_allowed_exception_still_exists():
    graph = _graph()
    stale = [key for key in ALLOWED if (key[1], key[2]) not in graph.get(key[0], set())]
    assert not stale, f"{stale}: no longer imported there; drop them from ALLOWED"


def test_a_violation_names_the_module_the_import_and_the_rule():
    wrong = _violations(
        {
            "lmforge.models.gpt": {("", "lmforge.training.trainer"), ("", "lmforge.layers.heads")},
            "lmforge.layers.heads": {("LMHead.forward", "lmforge.models.gpt")},
            "lmforge.generation.engine": {("", "lmforge.training.checkpoint")},
            "lmforge.api": {("load", "lmforge.training.checkpoint"), ("", "lmforge.errors")},
            "lmforge.models.base": {("Task.generate", "lmforge.generation.generate")},
        }
    )
    assert wrong == [
        "lmforge.api imports lmforge.training.checkpoint: loading may import only base, "
        "generation, interop, layers, models, tokenizers",
        "lmforge.generation.engine imports lmforge.training.checkpoint: generation may import "
        "only base, layers, models, tokenizers",
        "lmforge.layers.heads imports lmforge.models.gpt: layers may import only base",
        "lmforge.models.base imports lmforge.generation.generate: models may import only base, "
        "layers, tokenizers",
        "lmforge.models.gpt imports lmforge.training.trainer: models may import only base, "
        "layers, tokenizers",
    ]
