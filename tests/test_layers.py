"""The package's floor plan: dependencies point one way, no import cycles, light imports, package data.

Read from the source with ``ast`` (every import, including those inside functions), so a lazy
import that breaks the layering fails here too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Application layer: sits on the core and the runtimes.
APPLICATION = {"steerkit", "steerkit.api", "steerkit.cli", "steerkit.chat", "steerkit.session", "steerkit.discovery",
               "steerkit.evaluate"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in ((ROOT / "steerkit", "steerkit"), (ROOT / "runtimes", "steerkit.runtimes")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """steerkit modules that ``name`` imports anywhere in its source (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(MODULES[name].read_text())
    checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _layer(name: str) -> int:
    if name in APPLICATION or name.startswith("steerkit.serving"):
        return 2
    return 1 if name.startswith("steerkit.runtimes") else 0


def test_dependencies_point_one_way():
    wrong = [f"{name} ({_layer(name)}) imports {target} ({_layer(target)})"
             for name in MODULES for target in _imports(name)
             if _layer(target) > _layer(name) and name != "steerkit"]
    assert not wrong, "\n".join(wrong)
    # steerkit/__init__ is the front door: it names the application's functions but imports them only on use.
    top_level = {node.module for node in ast.parse(MODULES["steerkit"].read_text()).body
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert top_level <= {"__future__", "typing", "steerkit.errors", "steerkit.version"}


def test_the_runtimes_do_not_import_each_other():
    llamacpp = [n for n in MODULES if n.startswith("steerkit.runtimes.llamacpp")]
    hf = [n for n in MODULES if n.startswith("steerkit.runtimes.hf")]
    assert not [(a, b) for a in hf for b in _imports(a) if b in llamacpp]
    # The one way across: the Gemma stand-in fit (patch --approximate) runs transformers, imported when it runs.
    crossing = sorted((a, b) for a in llamacpp for b in _imports(a) if b in hf)
    assert crossing == [("steerkit.runtimes.llamacpp.stand_in", "steerkit.runtimes.hf"),
                        ("steerkit.runtimes.llamacpp.stand_in", "steerkit.runtimes.hf.post_norm_fit")], crossing


def test_no_import_cycles():
    graph = {name: _imports(name) - {"steerkit"} for name in MODULES}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


_BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("statement", [
    "import steerkit, steerkit.profile, steerkit.plan, steerkit.shipped, steerkit.weights.gguf_reader",
    "from steerkit.runtimes.llamacpp.backend import LlamaCppBackend; from steerkit.runtimes.llamacpp import patch_gguf",
    "import steerkit.cli",
])
def test_imports_without_torch(statement):
    """The core, the llama.cpp runtime and the CLI's start-up import neither torch nor transformers."""
    result = subprocess.run([sys.executable, "-c", _BLOCK_TORCH + statement], capture_output=True, text=True,
                            cwd="/")
    assert result.returncode == 0, result.stderr


def test_shipped_profiles_are_package_data():
    from steerkit.shipped import resolve_profile_path, shipped_dir, shipped_names, shipped_profile

    assert {"dog", "dog-clamp", "no-music"} <= set(shipped_names())
    assert shipped_profile("dog") == shipped_dir() / "dog.yaml"
    # Names are looked up, never joined into paths.
    assert shipped_profile("../pyproject") is None and shipped_profile("dog/../dog") is None
    assert resolve_profile_path("dog") == shipped_dir() / "dog.yaml"
    assert not any(name.startswith("runtimes") for name in sys.modules)
