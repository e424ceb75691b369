"""Requests refused before any work, strictly parsed options, locked output folders, verified caches: each a
clear error and no partial output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from headscope.cli import cli
from headscope.io import run_lock


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_refused(result, *fragments: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error[0]


@pytest.mark.parametrize("args, fragments", [
    (["classify", "--seq-len", "1000000000"], ["seq_len=1000000000", "context of 41", "at most 40", "(--seq-len)"]),
    (["classify", "--num-prompts", "1000000000"], ["num_prompts=1000000000", "TB of memory", "(--num-prompts)"]),
    (["ablate", "--heads", "L0H0", "--num-prompts", "1000000000"], ["need about", "available"]),
])
def test_absurd_sizes_are_refused_at_once(args, fragments):
    began = time.monotonic()
    assert_refused(run(*args), *fragments)
    assert time.monotonic() - began < 60  # refused before building anything (it took minutes, then exit 137)


def test_capture_refuses_a_huge_request_without_writing_results(tmp_path):
    out = tmp_path / "out"
    assert_refused(run("capture", "toy-induction-2l", "--num-prompts", "1000000000", "--out", str(out)),
                   "num_prompts=1000000000")
    assert not (out / "stats.json").exists()


@pytest.mark.parametrize("args, fragments", [
    (["capture", "toy-induction-2l", "--pattern-prompts", "foo,-1"], ["'foo' in 'foo,-1' is not an integer"]),
    (["capture", "toy-induction-2l", "--pattern-prompts", "0,-1"], ["-1 in '0,-1' is below 0"]),
    (["capture", "toy-induction-2l", "--patterns", ","], ["empty entry"]),
    (["capture", "toy-induction-2l", "--stats", "induction,,prev"], ["empty entry"]),
    (["flow", "--text", "t1 t2", "--heads", ""], ["empty entry"]),
    (["flow", "--text", "t1 t2", "--threshold", "nan"], ["nan is not a finite number"]),
    (["flow", "--method", "composition", "--threshold", "inf"], ["inf is not a finite number"]),
    (["ablate", "--heads", "L0H0", "--knockout", "0,x"], ["'x' in '0,x' is not an integer"]),
])
def test_options_are_parsed_strictly(tmp_path, args, fragments):
    extra = ["--out", str(tmp_path / "out")] if args[0] == "capture" else []
    extra += ["--out", str(tmp_path / "g.json")] if args[0] == "flow" else []
    assert_refused(run(*args, *extra), *fragments, code=2)
    assert not (tmp_path / "out" / "stats.json").exists() and not (tmp_path / "g.json").exists()


@pytest.mark.parametrize("args", [
    ["classify", "--num-prompts", "2", "--json", "{missing}/roles.json"],
    ["classify", "--num-prompts", "2", "--csv", "{missing}/roles.csv"],
    ["pattern", "toy-induction-2l", "L0H0", "--text", "t1 t2", "--html", "{missing}/p.html"],
    ["flow", "--text", "t1 t2", "--out", "{tmp}/ok.json", "--out", "{missing}/g.graphml"],
    ["ablate", "--heads", "L0H0", "--json", "{missing}/a.json"],
])
def test_outputs_are_checked_before_the_work(tmp_path, args):
    args = [a.format(missing=tmp_path / "no-such-folder", tmp=tmp_path) for a in args]
    began = time.monotonic()
    assert_refused(run(*args), "no-such-folder", "does not exist")
    assert time.monotonic() - began < 30
    assert not (tmp_path / "ok.json").exists()  # not even the outputs that could be written


def test_an_output_in_a_read_only_folder_is_refused_before_the_work(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    assert_refused(run("classify", "--json", str(folder / "r.json")), "not writable")


def test_a_folder_in_use_by_another_run_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from headscope.io import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run("capture", "toy-induction-2l", "--num-prompts", "2", "--out", str(out))
        assert_refused(result, f"in use by another headscope run (pid {holder.pid})")
        assert not (out / "stats.json").exists()
        assert_refused(run("classify", "--num-prompts", "2", "--resume", str(out)), f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out):  # the kernel dropped the killed holder's lock
        pass


def test_capture_holds_the_lock_only_while_it_runs(tmp_path):
    out = tmp_path / "out"
    assert run("capture", "toy-induction-2l", "--num-prompts", "2", "--out", str(out)).exit_code == 0
    assert run("capture", "toy-induction-2l", "--num-prompts", "2", "--out", str(out)).exit_code == 0
    json.loads((out / "stats.json").read_text())


def test_models_verify_reports_damage_and_exits_1(tmp_path, monkeypatch):
    from headscope.loading import registry

    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    (folder / registry._MARKER).write_text(json.dumps(registry._marker_data(registry.REGISTRY["smollm2-135m"].source)))
    result = run("models", "verify", "smollm2-135m")
    assert result.exit_code == 1
    assert "smollm2-135m: the cached smollm2-135m is damaged" in result.stderr
    assert "is 104 bytes, the pinned file 98362432" in result.stderr
    ok = run("models", "verify", "toy-induction-2l")
    assert ok.exit_code == 0 and ok.stdout.startswith("toy-induction-2l: ok, sha256 ")
