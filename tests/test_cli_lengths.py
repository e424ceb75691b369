"""`headscope classify --seq-len A,B,...`: one classification per length; a single length is today's output."""

from __future__ import annotations

import csv
import json

from headscope import load_model
from headscope.analysis import classify_heads
from headscope.capture.datasets import dataset_for_model
from headscope.reports import role_lines
from tests.test_cli import assert_one_line_error, run


def test_a_single_length_is_the_plain_classification(tmp_path):
    result = run("classify", "toy-induction-2l", "--seq-len", "16", "--num-prompts", "4", "--json",
                 str(tmp_path / "roles.json"))
    assert result.exit_code == 0, result.output
    model = load_model("toy-induction-2l")
    table = classify_heads(model, dataset_for_model(model, "repeated-random", seq_len=16, num_prompts=4))
    assert result.stdout.splitlines()[: -1] == role_lines(table)
    written = json.loads((tmp_path / "roles.json").read_text())
    assert written["results"] == json.loads(table.to_json())["results"]
    assert set(written) == {"model", "n_layers", "n_heads", "results", "meta"}


def test_several_lengths_write_the_sweep(tmp_path):
    out = {kind: tmp_path / f"sweep.{kind}" for kind in ("json", "csv", "html")}
    result = run("classify", "toy-induction-2l", "--seq-len", "8,40", "--num-prompts", "4", "--role", "induction",
                 *(arg for kind, path in out.items() for arg in (f"--{kind}", str(path))))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("toy-induction-2l: induction across 2 sequence lengths")
    assert lines[2].split()[0] == "8" and lines[3].split()[0] == "40"  # length, seconds, peak MB, holders
    data = json.loads(out["json"].read_text())
    assert data["seq_lens"] == [8, 40] and set(data["tables"]) == {"8", "40"}
    assert [e["seq_len"] for e in data["meta"]["per_length"]] == [8, 40]
    header = next(csv.reader(out["csv"].open()))
    assert header[:4] == ["layer", "head", "name", "kv_group"] and "induction_40" in header
    assert out["html"].read_text().startswith("<!DOCTYPE html>")


def test_a_length_beyond_the_context_and_a_lone_role_are_refused():
    assert_one_line_error(run("classify", "toy-induction-2l", "--seq-len", "8,64"),
                          "do not fit the model's context of 41", "(--seq-len)")
    assert_one_line_error(run("classify", "toy-induction-2l", "--seq-len", "16", "--role", "induction"),
                          "--role follows a role across lengths")
