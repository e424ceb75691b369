"""The figure commands end to end: every graph kind `flow` makes as SVG, PDF, PNG and HTML; `pattern` with
several heads; `classify --html`; `report`; each output read back."""

import networkx as nx
import pytest
import torch
from click.testing import CliRunner

from headscope.cli import cli
from headscope.loading.checkpoint import save_checkpoint
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS
from tests.viz.readback import external_references, ink_fraction, pdf_to_png, rendered_dom, texts_outside_canvas

FORMATS = ("svg", "pdf", "png", "html")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(HookedTransformer(TINY_CONFIGS["llama-gqa"]), tmp_path_factory.mktemp("m") / "tiny")


@pytest.mark.parametrize("method", ["rollout", "maxflow", "composition", "ablation"])
def test_every_flow_graph_kind_writes_svg_pdf_png_and_html(method, tmp_path):
    outs = [tmp_path / f"g.{suffix}" for suffix in FORMATS] + [tmp_path / "g.json"]
    result = run("flow", "toy-induction-2l", "--text", "t1 t2 t3 t1 t2 t3", "--method", method,
                 *[arg for out in outs for arg in ("--out", out)])
    assert result.exit_code == 0, result.output
    svg = outs[0].read_text()
    assert svg.startswith("<svg") and "updatemenu" not in svg and texts_outside_canvas(outs[0]) == []
    assert ink_fraction(pdf_to_png(outs[1])) > 0.02
    assert outs[2].read_bytes().startswith(b"\x89PNG")
    assert 'class="main-svg"' in rendered_dom(outs[3])
    graph = nx.node_link_graph(__import__("json").loads(outs[4].read_text()), edges="edges")
    value = graph.graph["node_value"]
    assert value == {"rollout": "relevance", "maxflow": "flow", "composition": "score", "ablation": "effect"}[method]
    assert graph.graph["node_value_label"].split()[0] in svg  # the colour bar names the method's quantity


def test_pattern_shows_every_head_named(checkpoint, tmp_path):
    toy = "toy-induction-2l"
    page, grid, pdf = tmp_path / "p.html", tmp_path / "p.svg", tmp_path / "p.pdf"
    result = run("pattern", toy, "L0H0,L1H1,L1H2", "--text", "t1 t2 t3 t1 t2 t3", "--html", page, "--out", grid, "--out", pdf,
                 "--query", "-1")
    assert result.exit_code == 0, result.output
    svg = grid.read_text()
    assert all(name in svg for name in ("L0H0", "L1H1", "L1H2")) and svg.count('class="hm"') == 3
    assert texts_outside_canvas(grid) == [] and ink_fraction(pdf_to_png(pdf)) > 0.02
    dom = rendered_dom(page)
    assert 'class="main-svg"' in dom and "updatemenu" in dom and dom.count('class="hs-text"') == 3
    assert external_references(page.read_text()) == []
    no_out = run("pattern", toy, "L0H0", "--text", "ab")
    assert no_out.exit_code == 1 and "--html or --out" in no_out.output
    no_page = run("pattern", toy, "L0H0", "--text", "ab", "--out", tmp_path / "q.svg", "--query", "0")
    assert no_page.exit_code == 1 and "text view to a page" in no_page.output
    no_text = run("pattern", str(checkpoint), "L1H0", "--html", tmp_path / "x.html")
    assert no_text.exit_code == 1 and "exactly one of --text or --prompt-file" in no_text.output


def test_classify_page_and_report_command(checkpoint, tmp_path):
    result = run("classify", checkpoint, "--seq-len", "12", "--num-prompts", "3", "--html", tmp_path / "roles.html",
                 "--json", tmp_path / "roles.json")
    assert result.exit_code == 0, result.output
    assert 'class="main-svg"' in rendered_dom(tmp_path / "roles.html")
    result = run("report", checkpoint, "--roles", tmp_path / "roles.json", "--num-prompts", "2", "--seq-len", "8",
                 "--out", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    dom = rendered_dom(tmp_path / "report.html")
    assert all(f'id="{s}"' in dom for s in ("roles", "patterns", "ablation", "flow", "provenance"))
    assert "headscope report " in dom and "--roles" in dom  # the command, in the provenance
    bad = run("report", checkpoint, "--out", tmp_path / "report.docx")
    assert bad.exit_code == 1 and "written as .html or .pdf" in bad.output


def test_flow_on_a_model_without_a_tokenizer_is_one_clear_line(tmp_path):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(HookedTransformer(TINY_CONFIGS["gpt2"]), tmp_path / "tiny")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("\n5 6 7\n")
    result = run("flow", checkpoint, "--prompt-file", prompt, "--out", tmp_path / "flow.graphml")
    assert result.exit_code == 1 and "no tokenizer" in result.output
    assert not (tmp_path / "flow.graphml").exists()


@pytest.mark.real_model
def test_flow_command_on_a_model_with_a_tokenizer(tmp_path, minilm_dir):
    outs = [tmp_path / "flow.graphml", tmp_path / "flow.svg", tmp_path / "flow.pdf"]
    result = run("flow", minilm_dir, "--text", "The cat sat on the mat.", "--method", "maxflow", "--top-k", "3",
                 *[arg for out in outs for arg in ("--out", out)])
    assert result.exit_code == 0, result.output
    graph = nx.read_graphml(outs[0])
    assert graph.nodes["L0P2"]["token"] == "cat" and "flow" in graph.nodes["L0P2"]
    assert "max-flow to position" in outs[1].read_text() and texts_outside_canvas(outs[1]) == []
    assert outs[2].read_bytes().startswith(b"%PDF")
    good_out = ["--out", tmp_path / "x.graphml"]
    cases = [
        (["--text", "   ", *good_out], "the prompt is empty"),
        (["--text", "The cat sat.", "--target-pos", "99", *good_out], "out of range"),
        (["--text", "The cat sat.", "--out", tmp_path / "g.xyz"], "unknown output format '.xyz'"),
        (["--text", "The cat sat.", "--out", tmp_path / "missing" / "g.graphml"], "does not exist"),
    ]
    for options, message in cases:
        result = run("flow", minilm_dir, *options)
        assert result.exit_code == 1 and message in result.output, (options, result.output)
    assert not (tmp_path / "x.graphml").exists() and not list(tmp_path.rglob("*.tmp"))
