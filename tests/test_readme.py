"""The README's examples run as written and print what the README says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from headscope.analysis import registered_roles, unregister_role

README = Path(__file__).parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    """The first ```python block of the README section that starts with `heading`."""
    section = README.read_text(encoding="utf-8").split(f"\n{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_defining_a_role_example_runs_and_prints_what_it_says():
    code = python_block_after("## Defining a role")
    assert len(code.strip().splitlines()) <= 14  # short enough to read at a glance
    promised = re.search(r"print\(.*\)\s*# (.+)", code)[1]
    before = {role.name for role in registered_roles()}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    finally:
        for role in registered_roles():
            if role.name not in before:
                unregister_role(role.name)
    assert out.getvalue().strip() == promised
    assert {role.name for role in registered_roles()} == before
