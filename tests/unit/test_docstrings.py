"""Every public function, class and method of the library has a docstring (issue 19).

Counted from the source with ``ast``, nothing imported. Public: a name without a leading
underscore, at module level or a method (properties included) of a public class, in
``finops/`` (the CLI package too), ``schemas/``, ``processors/``, ``producers/``, ``projections/``
and the checkout's ``bench/``. Not counted:
dunders, nested functions, ``@overload`` stubs and a property's ``.setter``/``.deleter``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("finops", "schemas", "processors", "producers", "projections", "bench")

Def = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _public(name: str) -> bool:
    return not name.startswith("_")


def _decorator_names(node: Def) -> list[str]:
    names = []
    for d in node.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        if isinstance(d, ast.Name):
            names.append(d.id)
        elif isinstance(d, ast.Attribute):
            names.append(d.attr)
    return names


def _counted(node: ast.AST) -> bool:
    if not isinstance(node, Def) or not _public(node.name):
        return False
    decorators = _decorator_names(node)
    return "overload" not in decorators and "setter" not in decorators and "deleter" not in decorators


def _definitions(body: list[ast.stmt]):
    """Module-level definitions, also those under ``if``/``try`` (e.g. ``if TYPE_CHECKING:``)."""
    for node in body:
        if isinstance(node, Def):
            yield node
        elif isinstance(node, ast.If):
            yield from _definitions(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _definitions(node.body + node.orelse + node.finalbody
                                    + [s for h in node.handlers for s in h.body])


def public_definitions(path: Path):
    """``(line, qualified name, has docstring)`` for each public definition of one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    stack = [(node, "") for node in _definitions(tree.body)]
    while stack:
        node, prefix = stack.pop()
        if not _counted(node):
            continue
        name = prefix + node.name
        yield node.lineno, name, ast.get_docstring(node) is not None
        if isinstance(node, ast.ClassDef):
            stack.extend((child, name + ".") for child in _definitions(node.body))


def library_modules() -> list[Path]:
    return sorted(p for part in PARTS for p in (ROOT / part).rglob("*.py") if "__pycache__" not in p.parts)


def undocumented() -> tuple[list[str], int]:
    missing, total = [], 0
    for path in library_modules():
        for line, name, documented in public_definitions(path):
            total += 1
            if not documented:
                missing.append(f"{path.relative_to(ROOT)}:{line} {name}")
    return sorted(missing), total


def test_the_count_sees_the_library():
    modules = library_modules()
    assert {p.relative_to(ROOT).parts[0] for p in modules} == set(PARTS)
    assert undocumented()[1] > 300


def test_every_public_function_class_and_method_has_a_docstring():
    missing, total = undocumented()
    assert not missing, f"{len(missing)} of {total} public definitions have no docstring:\n" + "\n".join(missing)


if __name__ == "__main__":  # python tests/unit/test_docstrings.py: the list, then the count
    missing, total = undocumented()
    print("\n".join(missing))
    print(f"{len(missing)} of {total} without a docstring")
