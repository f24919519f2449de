"""Rules of the layout: commands stay thin (no file I/O or threads), one meaning per public name."""
from __future__ import annotations

import ast
from collections import defaultdict

from ..conftest import REPO

PACKAGE = REPO / "jdnet_cli"
FILE_CALLS = {"open", "read_bytes", "write_bytes", "read_text", "write_text", "Thread", "ThreadPoolExecutor"}


def _modules():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "__init__.py"]


def test_commands_do_no_file_io_and_start_no_threads():
    found = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name in FILE_CALLS:
                    found.append(f"{path.name}:{node.lineno} {name}")
            if isinstance(node, ast.Attribute) and node.attr == "stdin":
                found.append(f"{path.name}:{node.lineno} stdin")
    assert not found


def test_each_public_function_name_is_defined_once():
    # One name, one meaning: e.g. parse_size once meant bytes in one module and WxH in another.
    where = defaultdict(list)
    for path in _modules():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(PACKAGE)))
    twice = {name: files for name, files in where.items() if len(files) > 1 and name != "main"}
    assert not twice
