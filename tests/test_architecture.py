"""Architecture rules that import-linter and ruff do not express (issue 12,
docs/decisions/0013-architecture-step.md).

- No function or method of the product (schemas, gateway, device_sim) is longer than
  80 lines: the 650-line closure function behind the accounts API is the shape this stops.
  Data tables are module-level constants, not functions, so they are not counted. Excluded:
  the vendored Swagger UI and the frozen migration history.
- No test module imports another test module (nor conftest): shared helpers live in
  ``tests/support/``, shared fixtures in conftest.

The import contracts themselves (no cycles, the core imports no adapter, ...) are in
pyproject.toml and run as ``lint-imports`` in scripts/test.sh.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "gateway", "device_sim")
EXCLUDED = (
    ROOT / "gateway" / "api" / "static",
    ROOT / "gateway" / "statedb" / "migrations" / "versions",
)
MAX_FUNCTION_LINES = 80


def _product_sources() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not any(path.is_relative_to(excluded) for excluded in EXCLUDED):
                yield path


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_is_longer_than_80_lines() -> None:
    too_long = []
    for path in _product_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for func in _functions(tree):
            assert func.end_lineno is not None
            lines = func.end_lineno - func.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                where = f"{path.relative_to(ROOT)}:{func.lineno}"
                too_long.append(f"{where} {func.name} ({lines} lines)")
    assert not too_long, "functions over 80 lines:\n" + "\n".join(too_long)


def _imported_modules(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # relative import inside tests/: `from . import x`, `from .x import y`
                base = "tests" + ("." + node.module if node.module else "")
                yield base
                yield from (f"{base}.{alias.name}" for alias in node.names)
            elif node.module is not None:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_no_test_module_imports_another_test_module() -> None:
    tests = ROOT / "tests"
    # conftest too: pytest loads it itself, and its fixtures reach tests by name
    test_modules = {path.stem for path in tests.glob("*.py")} - {"__init__"}
    offenders = []
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _imported_modules(tree):
            parts = name.split(".")
            if parts[0] == "tests":
                parts = parts[1:]
            if len(parts) == 1 and parts[0] in test_modules:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "test modules importing test modules:\n" + "\n".join(offenders)
