"""The architecture's rules (docs/architecture.md): import-linter's contracts in pyproject.toml hold,
and a wrong import breaks the contract it crosses.

``lint-imports`` finds a package's modules by walking its folder, and ours are mapped
(``finops.schemas`` is ``schemas/``, ``finops.processors`` is ``processors/``, ...). So it runs
in the layout the wheel installs, built from ``[tool.setuptools]`` as symbolic links to the
checkout's files. ``python tests/unit/test_architecture.py`` prints its report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# The pure ledger and what it may import besides the standard library (docs/architecture.md).
PURE = ("events", "state", "ledger", "fold", "merge", "plan", "changelog")
PURE_MAY_IMPORT = ("finops.schemas", "msgspec")


def installed_layout(dest: Path) -> Path:
    """``dest`` with the packages laid out as installed, one link per module file: each folder of
    ``[tool.setuptools.package-dir]`` and every package folder (with ``__init__.py``) below it."""
    folders = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in folders.items():
        source = ROOT / folder
        for init in source.rglob("__init__.py"):
            relative = init.parent.relative_to(source)
            if any(part.startswith((".", "__")) for part in relative.parts):
                continue
            target = dest / package.replace(".", "/") / relative
            target.mkdir(parents=True, exist_ok=True)
            for module in init.parent.glob("*.py"):
                if not (target / module.name).exists():
                    (target / module.name).symlink_to(module)
    return dest


def lint_imports(layout: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with pyproject.toml's contracts, over ``layout`` (it imports from its working dir)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"NO_COLOR": "1", "COLUMNS": "400"}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache"], cwd=layout, env=env,
                          capture_output=True, text=True, timeout=300)


def test_lint_imports_passes(tmp_path):
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: " in result.stdout and " broken" in result.stdout


@pytest.mark.parametrize("module, wrong_import, contract", [
    ("schemas/money.py", "from ..settings import Settings", "schemas imports no other part of finops"),
    ("processors/ledger.py", "import confluent_kafka",
     "the pure ledger imports only schemas, the standard library and msgspec"),
    ("processors/state.py", "from . import store", "the pure ledger imports only schemas, the standard library"),
    ("processors/runner.py", "from ..projections import balances", "the ledger never imports projections"),
    ("producers/usage.py", "from ..cli import app", "no part imports the CLI"),
    ("producers/scheduler.py", "from ..projections.balances import read_balances",
     "producers speak wire v1 only"),
])
def test_a_wrong_import_breaks_its_contract(tmp_path, module, wrong_import, contract):
    """Given the tree with one module copied and a wrong import added, lint-imports fails naming the contract."""
    layout = installed_layout(tmp_path)
    copy = layout / "finops" / module
    text = copy.read_text()
    copy.unlink()
    copy.write_text(f"{text}\n\n{wrong_import}  # a deliberately wrong import\n")
    result = lint_imports(layout)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken, result.stdout


def test_the_pure_ledger_imports_only_schemas_the_standard_library_and_msgspec(tmp_path):
    """An allow list, where the contracts are deny lists: every import of the pure ledger, direct or not."""
    layout = installed_layout(tmp_path)
    script = f"""
import sys, grimp
graph = grimp.build_graph("finops", include_external_packages=True, cache_dir=None)
pure = {{"finops.processors." + m for m in {PURE!r}}}
allowed = {PURE_MAY_IMPORT!r}
for module in sorted(pure):
    for imported in sorted(graph.find_upstream_modules(module)):
        top = imported.split(".")[0]
        if imported in pure or top in sys.stdlib_module_names or imported.startswith(allowed):
            continue
        print(module, "imports", imported)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=layout, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", result.stdout


def test_the_sink_stores_the_topics_of_topics_sink_topics():
    """One topic set: what the sink subscribes to and stores is schemas.topics.SINK_TOPICS, which
    ``finops wait`` waits on."""
    from finops.projections.sink import TABLES
    from finops.schemas import topics

    assert list(TABLES) == list(topics.SINK_TOPICS)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        done = lint_imports(installed_layout(Path(folder)))
        print(done.stdout, done.stderr, sep="", end="")
        sys.exit(done.returncode)
