"""The shape of migrator's code, checked on every run of the tests (no server, no I/O but reading
the sources):

- no file over MAX_FILE_LINES lines, no function over MAX_FUNCTION_LINES, unless it says why in a
  one-line comment starting with `# long:` (for a function: right above its def, or above its
  decorators; for a file: among its first lines, before its first import or definition);
- the engine knows stores only by the Store contract: nothing in migrator/engine imports a store
  implementation;
- what an account's scheme means is the stores' business (and accounts.py's): no other module
  compares `.scheme`.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "migrator"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
LONG = "# long:"
# Store implementations (migrator.stores.imap also stands for imap_connect, imap_wire, imap_parse).
STORE_IMPLEMENTATIONS = ("imap", "pop3", "archive", "memory", "connection")
# Where a scheme may be compared: the stores, and accounts.py, which parses it.
SCHEME_OWNERS = ("stores/", "accounts.py")


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@functools.cache
def _parsed(path: Path) -> tuple[list[str], ast.Module]:
    text = path.read_text(encoding="utf-8")
    return text.splitlines(), ast.parse(text, str(path))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _says_why(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(LONG) and bool(stripped[len(LONG):].strip())


def long_file(lines: list[str], tree: ast.Module) -> str | None:
    """'N lines' if the file is too long and does not say why, else None."""
    if len(lines) <= MAX_FILE_LINES:
        return None
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring: the comment may come before or after it
    first = body[0].lineno if body else len(lines) + 1
    if any(_says_why(line) for line in lines[: first - 1]):
        return None
    return f"{len(lines)} lines"


def long_functions(lines: list[str], tree: ast.Module) -> list[str]:
    """'name (N lines, line L)' for each function too long that does not say why."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        top = min([node.lineno] + [d.lineno for d in node.decorator_list])
        if length > MAX_FUNCTION_LINES and not (top >= 2 and _says_why(lines[top - 2])):
            out.append(f"{node.name} ({length} lines, line {node.lineno})")
    return out


def imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) for each import; `from a import b` names both a and a.b (b may be a module)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def is_store_implementation(module: str) -> bool:
    prefix = "migrator.stores."
    if not module.startswith(prefix):
        return False
    first = module[len(prefix):].split(".")[0]
    return first in STORE_IMPLEMENTATIONS or first.startswith("imap_")


def scheme_comparisons(tree: ast.Module) -> list[int]:
    """The lines of comparisons that involve an attribute named `scheme`."""
    return sorted({node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
                   and any(isinstance(sub, ast.Attribute) and sub.attr == "scheme" for sub in ast.walk(node))})


# -- the checks ------------------------------------------------------------------------------


def _too_long(find: Callable[[list[str], ast.Module], object]) -> dict[str, object]:
    """File -> what find() says of it, for the files it says something of."""
    out = {}
    for path in _sources():
        found = find(*_parsed(path))
        if found:
            out[_name(path)] = found
    return out


def test_no_file_is_over_500_lines_without_saying_why():
    too_long = _too_long(long_file)
    assert not too_long, (f"over {MAX_FILE_LINES} lines: split the file, or say why in a '{LONG} ...' comment "
                          f"among its first lines: {too_long}")


def test_no_function_is_over_60_lines_without_saying_why():
    too_long = _too_long(long_functions)
    assert not too_long, (f"over {MAX_FUNCTION_LINES} lines: shorten the function, or say why in a '{LONG} ...' "
                          f"comment right above it: {too_long}")


def test_the_engine_imports_no_store_implementation():
    found = [f"{_name(path)}:{line}: {module}" for path in _sources() if _name(path).startswith("engine/")
             for line, module in imported_modules(_parsed(path)[1]) if is_store_implementation(module)]
    assert not found, f"the engine knows stores by the Store contract only (stores/base.py, stores/calls.py): {found}"


def test_only_the_stores_and_accounts_compare_schemes():
    found = [f"{_name(path)}:{line}" for path in _sources() if not _name(path).startswith(SCHEME_OWNERS)
             for line in scheme_comparisons(_parsed(path)[1])]
    assert not found, f"what a scheme means is for stores/ and accounts.py to say (a Capabilities, a method): {found}"


# -- the checks check what they say -------------------------------------------------------------


def _shape(text: str) -> tuple[list[str], ast.Module]:
    return text.splitlines(), ast.parse(text)


def _function(lines: int, above: str = "", decorated: bool = False) -> str:
    head = (above + "\n" if above else "") + ("@staticmethod\n" if decorated else "")
    return head + "def f():\n" + "    x = 1\n" * (lines - 1)


def test_a_long_function_passes_only_with_a_reason_right_above_it():
    assert long_functions(*_shape(_function(MAX_FUNCTION_LINES))) == []
    assert long_functions(*_shape(_function(MAX_FUNCTION_LINES + 1))) == [f"f ({MAX_FUNCTION_LINES + 1} lines, line 1)"]
    assert long_functions(*_shape(_function(MAX_FUNCTION_LINES + 1, "# long: one table, read top to bottom"))) == []
    assert long_functions(*_shape(_function(MAX_FUNCTION_LINES + 1, "# long: a decorated one", decorated=True))) == []
    assert long_functions(*_shape(_function(MAX_FUNCTION_LINES + 1, "# long:"))) != []  # no reason given
    assert long_functions(*_shape(_function(MAX_FUNCTION_LINES + 1, "# long: far\n\n"))) != []  # not right above


def test_a_long_file_passes_only_with_a_reason_in_its_first_lines():
    body = "x = 1\n" * MAX_FILE_LINES
    assert long_file(*_shape(body)) is None
    assert long_file(*_shape('"""Doc."""\n' + body)) == f"{MAX_FILE_LINES + 1} lines"
    assert long_file(*_shape('"""Doc."""\n# long: one protocol, one class\n' + body)) is None
    assert long_file(*_shape('# long: one protocol, one class\n"""Doc."""\n' + body)) is None
    assert long_file(*_shape('"""Doc."""\n' + body + "# long: too late\n")) is not None


def test_imports_and_scheme_comparisons_are_found():
    tree = ast.parse("import migrator.stores.pop3\nfrom migrator.stores import imap_wire, calls\n"
                     "from migrator.stores.base import Store\nif ep.scheme == 'imaps':\n    pass\n"
                     "print(ep.scheme)\n")
    assert [m for _line, m in imported_modules(tree) if is_store_implementation(m)] == [
        "migrator.stores.pop3", "migrator.stores.imap_wire"]
    assert scheme_comparisons(tree) == [4]
