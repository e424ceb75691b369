"""Every package headscope imports at run time is a declared dependency (or an optional one imported lazily
with an install hint), so the README's plain `pip install -e .` runs every command."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Imported only inside the code paths that need them, each failing with an install hint (loading/load.py's
# _OPTIONAL, RoleTable.to_frame's pandas message).
OPTIONAL = {"transformers", "accelerate", "huggingface_hub", "transformer_lens", "pandas"}


def _imported_roots() -> dict[str, str]:
    """Top-level module -> one file importing it, over every module of the headscope package."""
    found = {}
    for path in sorted((ROOT / "headscope").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_runtime_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_normalise(re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0]) for dep in project["dependencies"]}
    distributions = packages_distributions()
    missing = []
    for module, where in _imported_roots().items():
        if module in sys.stdlib_module_names or module in ("headscope", "__future__") or module in OPTIONAL:
            continue
        dists = {_normalise(d) for d in distributions.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} (imported by {where}; distribution {', '.join(sorted(dists))})")
    assert not missing, "imported but not in [project] dependencies: " + "; ".join(missing)


def test_the_check_sees_a_missing_dependency():
    """scipy is imported by analysis/flow.py: the check above would fail if it left the dependencies."""
    assert "scipy" in _imported_roots()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(dep.startswith("scipy") for dep in project["dependencies"])
