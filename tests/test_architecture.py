"""The shape of the source tree: imports run one way (import-linter's contracts in pyproject.toml), no private name
crosses a module boundary, and no module or function grows past the size STYLE.md calls a smell without saying
why."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "sam2train"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

LONG_FUNCTIONS: dict[str, str] = {}
"""`module:qualified name` -> why that function may exceed MAX_FUNCTION_LINES (keep this empty if you can)."""


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module an `from X import ...` reads from, with relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_import_contracts_hold() -> None:
    """`lint-imports`: the layers cli > eval > train > losses | metrics > model > data > config | batch | viz |
    files > errors, and no import cycles (contracts in pyproject.toml). In its own process: its logging setup
    (`dictConfig`) would disable every logger of this session, `sam2train` included."""
    cmd = [str(Path(sys.executable).parent / "lint-imports"), str(ROOT / "pyproject.toml"), "--no-cache"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_private_name_is_imported_from_another_module() -> None:
    """A helper two modules need is public in the lower one (`from sam2train.x import _helper` is refused)."""
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(node, path)
                if source.split(".")[0] != "sam2train":
                    continue
                private = [a.name for a in node.names if _private(a.name)]
                private += [source] if any(_private(p) for p in source.split(".")) else []
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "sam2train"]
                private = [n for n in names if any(_private(p) for p in n.split("."))]
            else:
                continue
            found += [f"{_rel(path)}:{node.lineno}: {name}" for name in private]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_long_modules_say_why() -> None:
    """A module over MAX_MODULE_LINES lines says why in its docstring (a line with 'over 400 lines')."""
    found = []
    for path in _modules():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_MODULE_LINES and f"over {MAX_MODULE_LINES} lines" not in doc.lower():
            found.append(f"{_rel(path)}: {lines} lines")
    assert not found, (
        f"modules over {MAX_MODULE_LINES} lines without a reason ('over {MAX_MODULE_LINES} lines because ...') "
        "in their docstring:\n" + "\n".join(found)
    )


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append((prefix + node.name, node))
            found += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            found += _functions(node, f"{prefix}{node.name}.")
        else:
            found += _functions(node, prefix)
    return found


def test_no_long_functions() -> None:
    """No function over MAX_FUNCTION_LINES lines (def line to last line, docstring included), except the few
    in LONG_FUNCTIONS, each with its reason."""
    found, allowed = [], set()
    for path in _modules():
        module = _module_name(path)
        for name, node in _functions(ast.parse(path.read_text(), str(path))):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            key = f"{module}:{name}"
            if length > MAX_FUNCTION_LINES:
                if key in LONG_FUNCTIONS:
                    allowed.add(key)
                else:
                    found.append(f"{_rel(path)}:{node.lineno} {name}: {length} lines")
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)
    stale = sorted(set(LONG_FUNCTIONS) - allowed)
    assert not stale, f"LONG_FUNCTIONS entries that are no longer long (remove them): {stale}"
