"""Package boundaries from STYLE.md, checked by parsing imports."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        roots = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = roots
    return found


@pytest.mark.parametrize("package,forbidden", [("envs", {"torch", "agent", "benchmarks"}),
                                               ("agent", {"benchmarks", "ray"})])
def test_package_does_not_import(package, forbidden):
    for path, roots in imported_roots(package).items():
        assert not roots & forbidden, f"{path} imports {roots & forbidden}"


def test_agent_model_code_does_not_import_envs():
    entry_points = {"agent/__main__.py", "agent/cli.py"}  # only an entry point wires a concrete env
    for path, roots in imported_roots("agent").items():
        if path not in entry_points:
            assert "envs" not in roots, f"{path} imports envs"


def test_agent_imports_its_own_modules_relatively():
    for path, roots in imported_roots("agent").items():
        assert "agent" not in roots, f"{path} imports agent.* absolutely; agent/ uses relative imports"


def test_benchmark_helpers_are_cheap_to_import():
    import subprocess
    import sys

    code = "import sys, benchmarks.common; print(sorted({'torch', 'tensorboard'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
