"""`headscope pairs` and `headscope patch` through click's CliRunner: output, files, and one-line errors."""

import json

import pytest

from tests.test_cli import assert_one_line_error, run

TOY = "toy-induction-2l"


@pytest.fixture(scope="module")
def toy_pairs(tmp_path_factory):
    result = run("pairs", "induction", TOY, "--n", "12", "--seed", "1", "--period", "6")
    assert result.exit_code == 0, result.output
    path = tmp_path_factory.mktemp("pairs") / "toy.jsonl"
    path.write_text(result.stdout)
    return path


def test_pairs_prints_jsonl(toy_pairs):
    records = [json.loads(line) for line in toy_pairs.read_text().splitlines()]
    assert len(records) == 12 and set(records[0]) == {"clean", "corrupted", "answer", "wrong"}
    assert_one_line_error(run("pairs", "ioi", TOY, "--n", "4"), "IOI needs three names that are single tokens")


def test_patch_sweep_prints_baselines_and_writes_json_and_html(toy_pairs, tmp_path):
    out, page = tmp_path / "heads.json", tmp_path / "heads.html"
    result = run("patch", TOY, "--pairs", str(toy_pairs), "--sweep", "head", "--denoise", "--json", str(out),
                 "--html", str(page))
    assert result.exit_code == 0, result.output
    assert "denoising" in result.stdout and "logit-diff: clean" in result.stdout
    data = json.loads(out.read_text())
    assert data["kind"] == "head" and len(data["results"]) == 8 and data["meta"]["denoise"] is True
    assert page.stat().st_size > 1_000_000  # plotly.js inside: opens offline
    path = run("patch", TOY, "--pairs", str(toy_pairs), "--path", "L0H1:L1H1,L1H3", "--via", "k")
    assert path.exit_code == 0 and "senders -> L1H1,L1H3 via k" in path.stdout
    held = run("patch", TOY, "--pairs", str(toy_pairs), "--held-out", "2", "--control", "random:5")
    assert held.exit_code == 0 and "random-head control" in held.stdout and "measured on the other 6" in held.stdout
    atp = run("patch", TOY, "--pairs", str(toy_pairs), "--sweep", "head", "--method", "atp")
    assert atp.exit_code == 0 and "atp head patching" in atp.stdout


def test_bad_input_is_one_line_and_writes_nothing(toy_pairs, tmp_path):
    good = json.loads(toy_pairs.read_text().splitlines()[0])
    cases = {
        "length": ({**good, "corrupted": good["corrupted"] + " t1"}, "line 2: clean is 12 tokens but corrupted is 13"),
        "multi": ({**good, "answer": "t1 t2"}, "line 2: answer 't1 t2' is 2 tokens, not one"),
        "same": ({**good, "wrong": good["answer"]}, "line 2: answer and wrong are the same token"),
    }
    out = tmp_path / "out.json"
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        assert_one_line_error(run("patch", TOY, "--pairs", str(path), "--sweep", "head", "--json", str(out)), message)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(run("patch", TOY, "--pairs", str(empty), "--sweep", "head", "--json", str(out)), "is empty")
    pairs = str(toy_pairs)
    assert_one_line_error(run("patch", TOY, "--pairs", pairs, "--heads", "L7H0", "--json", str(out)),
                          "head L7H0 does not exist")
    assert_one_line_error(run("patch", TOY, "--pairs", pairs, "--path", "L1H0:L0H1", "--via", "k", "--json", str(out)),
                          "path L1H0 -> L0H1: the receiver (layer 0) must come after the sender (layer 1)")
    assert_one_line_error(run("patch", TOY, "--pairs", pairs, "--heads", "L1H0", "--sweep", "head"), "exactly one of")
    assert_one_line_error(run("patch", TOY, "--pairs", pairs, "--heads", "L1H0", "--control", "many"), "random:N")
    assert not out.exists()


def test_ablate_held_out_with_random_control_and_its_refusals(tmp_path):
    out = tmp_path / "held.json"
    result = run("ablate", TOY, "--held-out", "2", "--control", "random:4", "--metric", "induction-loss",
                 "--num-prompts", "8", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "chosen on 4 prompts, measured on the other 4" in result.stdout and "random-head control" in result.stdout
    held = json.loads(out.read_text())["meta"]["held_out"]
    assert not set(held["select"]) & set(held["evaluate"]) and held["control"]["n_draws"] == 4
    named = run("ablate", TOY, "--heads", "L1H1,L1H3", "--control", "random:3", "--metric", "induction-loss")
    assert named.exit_code == 0 and "of 3 random draws" in named.stdout
    assert_one_line_error(run("ablate", TOY, "--sweep", "head", "--control", "random:3"), "--control random:N compares")
    assert_one_line_error(run("ablate", TOY, "--held-out", "2", "--heads", "L0H0"), "exactly one of")


@pytest.mark.real_model
def test_an_encoder_is_ablated_with_the_cosine_metric(minilm_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat\na dog ran in the park\nsentence embeddings are useful\n")
    result = run("ablate", "minilm-l6", "--dataset", str(texts), "--heads", "L5H11", "--metric", "cosine")
    assert result.exit_code == 0, result.output
    assert "cosine baseline 1.0000" in result.stdout
    refused = run("ablate", "minilm-l6", "--dataset", str(texts), "--heads", "L5H11")
    assert_one_line_error(refused, "use the cosine metric")
