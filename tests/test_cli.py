"""The `headscope` command through click's CliRunner: output, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import headscope
from headscope.cli import cli
from headscope.reports import group_hook_names
from headscope.errors import ModelNotFoundError
from headscope.loading.checkpoint import save_checkpoint
from headscope.model.config import ModelConfig
from headscope.model.transformer import HookedTransformer

TINY = ModelConfig(architecture="llama", d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4, d_vocab=23,
                   n_ctx=16, d_mlp=32, act_fn="silu", gated_mlp=True, norm="rmsnorm", positional="rotary")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(HookedTransformer(TINY), tmp_path / "tiny")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"headscope, version {headscope.__version__}"


def test_models_list_shows_every_registered_model(empty_cache):
    result = run("models", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "architecture"]
    smol, minilm = lines[1].split(), lines[2].split()
    assert smol[:9] == ["smollm2-135m", "instruct", "llama", "30", "x", "9", "(3)", "gguf", "Q4_1"]
    assert smol[-3:] == ["b179c9523d0e", "not", "cached"]  # pinned: known before any download
    assert minilm[:9] == ["minilm-l6", "sentence", "embedding", "bert", "6", "x", "12", "(12)", "hf"]
    assert minilm[-2:] == ["not", "cached"]


def test_models_info_prints_config_and_grouped_hook_names(tiny_checkpoint):
    result = run("models", "info", str(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"source: {tiny_checkpoint}" in out
    assert "  n_kv_heads " in out and "  positional " in out
    assert "\n  hook_embed\n" in out
    assert "\n  blocks.{0..1}.attn.hook_pattern\n" in out
    assert "blocks.0." not in out  # every per-layer name is folded


def test_models_info_json_is_the_config(tiny_checkpoint):
    result = run("models", "info", "--json", "-", str(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    assert ModelConfig.from_dict(json.loads(result.stdout)) == TINY


def test_group_hook_names_folds_layers():
    names = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre",
             "blocks.0.attn.hook_q", "blocks.2.attn.hook_q", "ln_final.hook_scale"]
    assert group_hook_names(names) == ["hook_embed", "blocks.{0..2}.hook_resid_pre", "blocks.{0,2}.attn.hook_q",
                                       "ln_final.hook_scale"]


def test_unknown_model_is_one_line_and_exit_1():
    assert_one_line_error(run("models", "info", "gpt2"), "unknown model 'gpt2'", "smollm2-135m, minilm-l6, toy-induction-2l")


def test_missing_path_and_foreign_folder_are_one_line(tmp_path):
    assert_one_line_error(run("models", "info", str(tmp_path / "model.gguf")), "no such file or folder")
    (tmp_path / "notes.txt").write_text("x")
    assert_one_line_error(run("models", "info", str(tmp_path)), "has no config.json")


def test_debug_shows_the_traceback():
    result = run("--debug", "models", "info", "gpt2")
    assert result.exit_code == 1
    assert isinstance(result.exception, ModelNotFoundError)  # re-raised, so Python prints the traceback


def test_fetch_of_an_unknown_name_downloads_nothing(empty_cache):
    assert_one_line_error(run("models", "fetch", "minilm-l6", "bogus-model"), "unknown model name 'bogus-model'",
                    "known names are smollm2-135m, minilm-l6, toy-induction-2l")
    assert not empty_cache.exists()


def test_fetch_needs_a_name():
    result = run("models", "fetch")
    assert result.exit_code == 2 and "Missing argument" in result.stderr


@pytest.mark.real_model
def test_fetch_prints_the_cached_path(empty_cache):
    result = run("models", "fetch", "minilm-l6")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"minilm-l6: {empty_cache / 'minilm-l6'}\n"
    listed = run("models", "list").stdout.splitlines()[2]
    assert listed.endswith(str(empty_cache / "minilm-l6"))


@pytest.mark.real_model
def test_models_info_of_the_real_models(smollm2_gguf, minilm_dir):
    result = run("models", "info", "smollm2-135m")
    assert result.exit_code == 0, result.output
    assert "blocks.{0..29}.attn.hook_pattern" in result.stdout
    assert "  n_kv_heads         3" in result.stdout
    bert = json.loads(run("models", "info", "--json", "-", str(minilm_dir)).stdout)
    assert (bert["n_layers"], bert["n_heads"], bert["causal"]) == (6, 12, False)


def test_capture_writes_statistics_and_patterns(tiny_checkpoint, tmp_path):
    out = tmp_path / "capture"
    result = run("capture", str(tiny_checkpoint), "--seq-len", "12", "--num-prompts", "3", "--stats",
                 "prev,induction,entropy", "--patterns", "L1H2", "--pattern-prompts", "0,2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "top heads per statistic" in result.stdout and "induction" in result.stdout
    report = json.loads((out / "stats.json").read_text())
    assert len(report["results"]) == 2 * 4 and report["counts"]["induction"] == 3 * 6
    assert report["results"][6]["heads"] == ["L1H2"] and set(report) >= {"model", "results", "meta"}
    assert report["meta"]["seed"] == 0 and report["meta"]["dataset"] == "repeated-random"
    saved = headscope.CaptureResult.load(out / "stats.safetensors")
    assert saved.statistics == ("previous_token", "induction", "entropy")
    patterns = headscope.load_patterns(out / "patterns.safetensors")
    assert set(patterns.patterns) == {("L1H2", 0), ("L1H2", 2)}
    assert not (out / "progress.safetensors").exists()
    assert (out / "stats.json").stat().st_mode & 0o044  # readable by others, like any output


def test_capture_bad_requests_are_one_line(tiny_checkpoint, tmp_path):
    assert_one_line_error(run("capture", str(tiny_checkpoint), "--stats", "nonsense", "--out", str(tmp_path / "a")),
                    "unknown statistic 'nonsense'")
    assert_one_line_error(run("capture", str(tiny_checkpoint), "--patterns", "L9H0", "--out", str(tmp_path / "b")),
                    "head L9H0 does not exist")
    assert_one_line_error(run("capture", str(tiny_checkpoint), "--seq-len", "40", "--out", str(tmp_path / "c")),
                    "do not fit the model's context of 16")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("some text\n")
    assert_one_line_error(run("capture", str(tiny_checkpoint), "--dataset", str(prompts), "--out", str(tmp_path / "d")),
                    "no tokenizer")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run("capture", str(tiny_checkpoint), "--out", str(blocker / "sub")), "cannot create output folder")
    assert not list(tmp_path.glob("[abcd]/*.json"))


def test_capture_on_cuda_without_cuda_is_refused(tiny_checkpoint, tmp_path):
    if torch.cuda.is_available():
        return  # the refusal only exists where CUDA is missing
    result = run("capture", str(tiny_checkpoint), "--device", "cuda", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "CUDA is not available on this machine" in result.output


def test_bad_model_files_are_one_line_and_exit_1(tmp_path):
    import gguf
    import numpy as np

    fake = tmp_path / "notes.gguf"
    fake.write_text("this is not a model\n" * 10)
    assert_one_line_error(run("models", "info", str(fake)), "notes.gguf")
    writer = gguf.GGUFWriter(tmp_path / "mamba.gguf", "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes((tmp_path / "mamba.gguf").read_bytes()[:100])
    assert_one_line_error(run("models", "info", str(truncated)), "truncated.gguf")
    assert_one_line_error(run("models", "info", str(tmp_path / "mamba.gguf")), "mamba")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert_one_line_error(run("models", "info", str(no_weights)), "no-weights")


def test_classify_prints_roles_and_writes_json_and_csv(tiny_checkpoint, tmp_path):
    import csv

    result = run("classify", str(tiny_checkpoint), "--seq-len", "12", "--num-prompts", "4",
                 "--json", str(tmp_path / "roles.json"), "--csv", str(tmp_path / "roles.csv"))
    assert result.exit_code == 0, result.output
    assert "heads hold roles" in result.stdout
    report = json.loads((tmp_path / "roles.json").read_text())
    assert set(report) == {"model", "n_layers", "n_heads", "results", "meta"}
    assert (report["n_layers"], report["n_heads"]) == (2, 4) and len(report["results"]) == 8
    first = report["results"][0]
    assert (first["layer"], first["head"], first["heads"]) == (0, 0, ["L0H0"])
    assert {"previous_token", "induction", "duplicate_token", "attention_sink", "self"} <= set(first["scores"])
    assert all(isinstance(v, float) for v in first["scores"].values()) and isinstance(first["roles"], list)
    assert {"dataset", "seq_len", "num_prompts", "seed", "headscope_version"} <= set(report["meta"])
    rows = list(csv.DictReader((tmp_path / "roles.csv").open()))
    assert len(rows) == 8


def test_classify_bad_input_is_one_line(tiny_checkpoint, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert_one_line_error(run("classify", str(tiny_checkpoint), "--dataset", str(empty)), "empty")
    assert_one_line_error(run("classify", str(tiny_checkpoint), "--seq-len", "3"), "two periods")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("some text\n")
    assert_one_line_error(run("classify", str(tiny_checkpoint), "--dataset", str(prompts)), "no tokenizer")
    assert not (tmp_path / "roles.json").exists()


def test_flow_composition_writes_a_head_graph(tiny_checkpoint, tmp_path):
    import networkx as nx

    out = tmp_path / "heads.graphml"
    result = run("flow", str(tiny_checkpoint), "--method", "composition", "--composition", "v", "--top-k", "1",
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    graph = nx.read_graphml(out)
    assert graph.number_of_nodes() == 8 and graph.number_of_edges() == 4  # one source for each layer-1 head


def test_ablate_sweeps_and_sets(tiny_checkpoint, tmp_path):
    result = run("ablate", str(tiny_checkpoint), "--sweep", "head", "--seq-len", "8", "--num-prompts", "4",
                 "--metric", "induction-loss", "--json", str(tmp_path / "sweep.json"))
    assert result.exit_code == 0, result.output
    assert "induction-loss baseline" in result.stdout
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["metric"] == "induction-loss" and len(report["results"]) == 8
    assert set(report["results"][0]) == {"heads", "value", "delta", "ci"}
    one_at_a_time = run("ablate", str(tiny_checkpoint), "--sweep", "head", "--seq-len", "8", "--num-prompts", "4",
                        "--metric", "induction-loss", "--max-memory", "1KB", "--json", str(tmp_path / "small.json"))
    assert one_at_a_time.exit_code == 0, one_at_a_time.output
    small = json.loads((tmp_path / "small.json").read_text())
    assert [r["value"] for r in small["results"]] == pytest.approx([r["value"] for r in report["results"]], abs=1e-6)
    roles = tmp_path / "roles.json"
    assert run("classify", str(tiny_checkpoint), "--seq-len", "8", "--json", str(roles)).exit_code == 0
    report = json.loads(roles.read_text())
    report["results"][5]["roles"] = ["induction"]  # pretend L1H1 is an induction head
    roles.write_text(json.dumps(report))
    by_role = run("ablate", str(tiny_checkpoint), "--role", "induction", "--roles", str(roles), "--method", "mean",
                  "--seq-len", "8")
    assert by_role.exit_code == 0 and "L1H1 " in by_role.stdout


def test_ablate_bad_input_is_one_line(tiny_checkpoint, tmp_path):
    assert_one_line_error(run("ablate", str(tiny_checkpoint), "--heads", "L99H0"), "L99H0 does not exist")
    assert_one_line_error(run("ablate", str(tiny_checkpoint), "--heads", "foo"), "bad head name 'foo'")
    assert_one_line_error(run("ablate", str(tiny_checkpoint), "--heads", "L0H0", "--max-memory", "1GB"),
                          "are for a --sweep")
    assert_one_line_error(run("ablate", str(tiny_checkpoint)), "exactly one of --heads")
    assert_one_line_error(run("ablate", str(tiny_checkpoint), "--heads", "L0H0", "--metric", "logit-diff"),
                          "go together")
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("")
    assert_one_line_error(run("ablate", str(tiny_checkpoint), "--heads", "L0H0", "--metric", "logit-diff",
                              "--pairs", str(empty)), "tokenizer")


def test_classify_with_no_model_uses_the_shipped_toy_model(empty_cache):
    result = run("classify")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("toy-induction-2l:")
    held = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[2:] if line.startswith("  L")}
    assert any(head.startswith("L1") and role == "induction" for head, role in held.items())
    assert any(head.startswith("L0") and role == "previous_token" for head, role in held.items())
    # nothing was downloaded (the digest sidecars of the shipped model's files may be there)
    assert not empty_cache.exists() or not [p for p in empty_cache.iterdir() if p.name != "sha256"]


def test_flow_ablation_weights_the_head_graph_by_measured_effects(tmp_path):
    import networkx as nx

    out = tmp_path / "measured.graphml"
    result = run("flow", "--method", "ablation", "--top-k", "2", "--out", str(out))  # the shipped toy model
    assert result.exit_code == 0, result.output
    graph = nx.read_graphml(out)
    assert graph.number_of_edges() == 8 and all("effect" in d and "composition_score" in d
                                                for _, _, d in graph.edges(data=True))


def test_ablate_knockout_cuts_attention_edges(tiny_checkpoint):
    result = run("ablate", str(tiny_checkpoint), "--heads", "L1H0", "--knockout", "0", "--seq-len", "8")
    assert result.exit_code == 0, result.output
    assert "knockout ablation" in result.stdout and "L1H0" in result.stdout
    assert_one_line_error(run("ablate", str(tiny_checkpoint), "--sweep", "head", "--knockout", "0"), "not a --sweep")
    assert_one_line_error(run("ablate", str(tiny_checkpoint), "--heads", "L1H0", "--knockout", "99",
                              "--seq-len", "8"), "out of range")


def test_models_info_names_each_layers_attention_type(tmp_path):
    """Issue 19: local windows, global layers and sinks, layer by layer (equal neighbours folded)."""
    import dataclasses

    from tests.conftest import TINY_CONFIGS

    cfg = dataclasses.replace(TINY_CONFIGS["sinks"], n_layers=4, windows=(5, 5, None, 5))
    folder = save_checkpoint(HookedTransformer(cfg), tmp_path / "local")
    result = run("models", "info", str(folder))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index("attention per layer:")
    assert lines[start + 1 : start + 4] == ["  L0-L1: local window 5, sinks", "  L2: global, sinks",
                                            "  L3: local window 5, sinks"]


def test_flow_routes_and_contributions_in_every_format(tmp_path):
    import networkx as nx
    import pydot

    outs = [tmp_path / f"routes{suffix}" for suffix in (".graphml", ".gexf", ".json", ".dot", ".html")]
    args = ["flow", "--text", "t3 t9 t14 t22 t3 t9 t14", "--method", "routes", "--threshold", "0.05"]
    result = run(*args, *[arg for out in outs for arg in ("--out", str(out))])  # the shipped toy model
    assert result.exit_code == 0, result.output
    graph = nx.read_graphml(outs[0])
    assert graph.is_multigraph() and graph.number_of_edges() > 0
    assert all(w >= 0.05 for _, _, w in graph.edges(data="weight"))
    assert {c for _, _, c in graph.edges(data="component")} & {"L1H0", "L1H1", "L1H2", "L1H3"}
    assert nx.read_gexf(outs[1]).number_of_edges() == graph.number_of_edges()
    assert len(json.loads(outs[2].read_text())["edges"]) == graph.number_of_edges()
    assert len(pydot.graph_from_dot_file(str(outs[3]))[0].get_edges()) == graph.number_of_edges()
    assert "plotly" in outs[4].read_text()
    for method in ("alti", "norm", "value-zeroing"):
        out = tmp_path / f"{method}.graphml"
        result = run("flow", "--text", "t3 t9 t14 t3", "--method", method, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert nx.read_graphml(out).graph["node_value"] == "relevance"
    assert_one_line_error(run(*args, "--top-k", "2", "--out", str(tmp_path / "x.json")), "top")
    assert_one_line_error(run("flow", "--text", "t3 t9", "--method", "routes", "--threshold", "0",
                              "--out", str(tmp_path / "y.json")), "threshold")


def test_classify_roles_scores_and_writes_only_the_chosen_roles(tiny_checkpoint, tmp_path):
    result = run("classify", str(tiny_checkpoint), "--seq-len", "12", "--num-prompts", "4", "--roles",
                 "induction,self", "--json", str(tmp_path / "roles.json"), "--csv", str(tmp_path / "roles.csv"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "roles.json").read_text())
    assert all(list(row["scores"]) == ["induction", "self"] for row in report["results"])
    header = (tmp_path / "roles.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if not c.startswith(("induction", "self"))] == [
        "layer", "head", "name", "kv_group", "roles", "copying"]
    assert_one_line_error(run("classify", str(tiny_checkpoint), "--roles", "induction,nope"),
                          "unknown role 'nope'; roles: previous_token", "retrieval", "(--roles)")
    assert_one_line_error(run("classify", str(tiny_checkpoint), "--roles", "sep"),
                          "role sep cannot be scored", "encoder models only", "(--roles)")
    empty = run("classify", str(tiny_checkpoint), "--roles", "induction,,self")
    assert empty.exit_code == 2 and "'induction,,self' has an empty entry" in empty.stderr
    sweep = run("classify", str(tiny_checkpoint), "--seq-len", "8,12", "--num-prompts", "3", "--roles", "self",
                "--json", str(tmp_path / "sweep.json"))
    assert sweep.exit_code == 0, sweep.output
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data["role"] == "self" and all(list(t["results"][0]["scores"]) == ["self"] for t in data["tables"].values())
