"""Conventions the whole package keeps: library messages never name command-line flags, and modules and
functions stay small enough to read in one sitting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "headscope"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules(include_cli: bool = True) -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if include_cli or "cli" not in p.relative_to(PACKAGE).parts]


def _message_strings(tree: ast.AST):
    """Every string literal (f-string parts included) inside a `raise` or a `warnings.warn(...)` call."""
    for node in ast.walk(tree):
        warn = isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "warn"
        if isinstance(node, ast.Raise) or warn:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    yield sub.lineno, sub.value


def test_library_messages_name_no_command_line_flag():
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
             for path in _modules(include_cli=False)
             for line, text in _message_strings(ast.parse(path.read_text(encoding="utf-8")))
             if FLAG.search(text)]
    assert found == [], "library errors speak of values, the CLI adds its flags:\n" + "\n".join(found)


def test_the_flag_pattern_finds_flags_and_nothing_else():
    assert FLAG.search("use a shorter --seq-len") and FLAG.search("(--top-k)")
    assert not FLAG.search("seq_len must be >= 2") and not FLAG.search("x--y") and not FLAG.search("a -- b")


def test_modules_and_functions_are_short():
    long_modules, long_functions = [], []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(PACKAGE)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert long_modules == [] and long_functions == [], long_modules + long_functions
