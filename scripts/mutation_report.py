"""Mutation testing of the scientific core, one module at a time, and the score of each module.

    python scripts/mutation_report.py headscope/analysis/intervals.py headscope/analysis/ablation.py
    python scripts/mutation_report.py --report-only            # scores of what has been run, no new run

For each module it runs `mutmut run --max-children 1 "<module>.*"` (mutmut 3: each mutant runs only the
tests that call the mutated function; [tool.mutmut] in pyproject.toml leaves out the real-model tests),
then reads mutmut's results from mutants/ and writes a table per module to `--output`: killed, survived,
timeout, no tests, equivalent (survivors listed in `--equivalents` with why they change nothing a user
sees), and the score: (killed + timeout) / (all - equivalent), in percent. The surviving mutants that are
not listed as equivalent are named under the table with their diff, so each is either killed by a test or
explained. One mutmut child process and OMP_NUM_THREADS=1: the machine is shared (docs/testing.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# mutmut 3's exit codes (mutmut/stats.py): 1 and 3 killed, 0 survived, 33 and 5 no tests, timeouts.
KILLED, SURVIVED, NO_TESTS, TIMEOUT = {1, 3}, {0}, {5, 33}, {24, -24, 36, 152, 255}


def dotted(module: str) -> str:
    """headscope/analysis/intervals.py -> headscope.analysis.intervals"""
    return module.removesuffix(".py").replace("/", ".")


def open_mutants(module: str, equivalents: dict[str, str]) -> list[str]:
    """The mutants of a module that a previous run left survived, without tests or unrun (not equivalent)."""
    meta = ROOT / "mutants" / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    return sorted(name for name, code in codes.items()
                  if (code is None or code in SURVIVED | NO_TESTS) and name not in equivalents)


def run_mutmut(module: str, names: list[str] | None = None) -> int:
    """Run mutmut on one module's mutants (or only `names`); its exit status."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # mutmut puts its mutated copy first; the worktree must not shadow it
    mutmut = Path(sys.executable).with_name("mutmut")
    command = [str(mutmut), "run", "--max-children", "1", *(names or [f"{dotted(module)}.*"])]
    print("$", " ".join(command) if len(command) < 12 else f"{' '.join(command[:5])} ... ({len(command) - 4} mutants)",
          flush=True)
    log = ROOT / "mutants" / f"run-{dotted(module)}.log"  # mutmut's progress, to follow with tail
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        return subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def read_equivalents(path: Path) -> dict[str, str]:
    """Mutant name -> why it is equivalent, from lines `name  # reason` (blank lines and # lines skipped)."""
    found = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, reason = line.partition("#")
            found[name.strip()] = reason.strip()
    return found


def module_scores(module: str, equivalents: dict[str, str]) -> dict | None:
    """Counts and score of one module from mutmut's results, None when it has not been run."""
    meta = ROOT / "mutants" / (module + ".meta")
    if not meta.exists():
        return None
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    if not codes or all(code is None for code in codes.values()):
        return None
    counts = Counter()
    open_survivors, stale = [], []
    for name, code in sorted(codes.items()):
        if code in KILLED:
            counts["killed"] += 1
        elif code in TIMEOUT:
            counts["timeout"] += 1
        elif code in NO_TESTS:
            counts["no tests"] += 1
        elif code is None:
            counts["not run"] += 1
        elif code in SURVIVED and name in equivalents:
            counts["equivalent"] += 1
        elif code in SURVIVED:
            counts["survived"] += 1
            open_survivors.append(name)
        else:
            counts["other"] += 1  # suspicious, segfault, ...: neither killed nor explained
        if name in equivalents and code not in SURVIVED:
            stale.append(name)
    scored = len(codes) - counts["equivalent"] - counts["not run"]
    score = 100.0 * (counts["killed"] + counts["timeout"]) / scored if scored else float("nan")
    return {"module": module, "mutants": len(codes), **counts, "score": score, "open": open_survivors,
            "stale_equivalents": stale}


def diff_of(name: str) -> str:
    """mutmut's diff of one mutant, the changed lines only."""
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "show", name], cwd=ROOT, capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines()
                     if line[:1] in "+-" and not line.startswith(("+++", "---")))


def write_report(rows: list[dict], output: Path) -> None:
    """A markdown table of the modules' scores, then the open survivors of each with their diff."""
    columns = ["killed", "survived", "timeout", "no tests", "equivalent", "other", "not run"]
    lines = ["| module | mutants | " + " | ".join(columns) + " | score (% of non-equivalent killed) |",
             "|---|---|" + "---|" * len(columns) + "---|"]
    for row in rows:
        cells = " | ".join(str(row.get(c, 0)) for c in columns)
        partial = " (partial run: of the mutants run)" if row.get("not run") else ""
        lines.append(f"| {row['module']} | {row['mutants']} | {cells} | {row['score']:.1f}{partial} |")
    for row in rows:
        if row["open"]:
            lines += ["", f"### Survivors not yet explained: {row['module']}", ""]
            for name in row["open"]:
                lines += [f"- `{name}`", "", "```diff", diff_of(name), "```"]
        if row["stale_equivalents"]:
            lines += ["", f"Listed as equivalent but no longer surviving in {row['module']}: "
                      + ", ".join(row["stale_equivalents"])]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths, e.g. headscope/analysis/intervals.py")
    parser.add_argument("--report-only", action="store_true", help="score what mutants/ holds, run nothing")
    parser.add_argument("--open-only", action="store_true",
                        help="rerun only the mutants a previous run left survived or without tests (after adding tests)")
    parser.add_argument("--equivalents", type=Path, default=ROOT / "docs" / "mutation_equivalents.txt")
    parser.add_argument("--output", type=Path, default=ROOT / "mutants" / "mutation_report.md")
    args = parser.parse_args(argv)
    modules = args.modules or sorted(str(p.relative_to(ROOT / "mutants")).removesuffix(".meta")
                                     for p in (ROOT / "mutants" / "headscope").rglob("*.py.meta"))
    equivalents = read_equivalents(args.equivalents)
    for module in [] if args.report_only else args.modules:
        names = open_mutants(module, equivalents) if args.open_only else None
        if names == []:
            continue
        if run_mutmut(module, names) != 0:
            print(f"mutmut failed on {module}", file=sys.stderr)
            return 1
    rows = [row for row in (module_scores(m, equivalents) for m in modules) if row is not None]
    write_report(rows, args.output)
    for row in rows:
        print(f"{row['module']}: {row['score']:.1f}% of {row['mutants'] - row.get('equivalent', 0) - row.get('not run', 0)} "
              f"non-equivalent mutants killed ({row.get('survived', 0)} survived, {row.get('no tests', 0)} "
              f"without tests, {row.get('equivalent', 0)} equivalent"
              + (f"; PARTIAL: {row['not run']} not run)" if row.get("not run") else ")"))
    print(f"report: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
