"""Figures checked by their data, and every page opened in headless Chromium with no network."""

import shutil
import subprocess
import tempfile

import pytest
import torch
from click.testing import CliRunner

from headscope.analysis import classify_heads
from headscope.cli import cli
from headscope.errors import InputError
from headscope.loading.checkpoint import save_checkpoint
from headscope.model.transformer import HookedTransformer
from headscope.viz import pattern_figure, role_heatmap, write_html
from tests.conftest import TINY_CONFIGS

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000", "--dump-dom"]


def rendered_dom(path) -> str:
    """The page's DOM after Chromium ran its scripts, offline: plotly draws into `main-svg` elements."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Chromium is needed to check pages as a person sees them: run scripts/install_chromium.sh"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"file://{path.resolve()}"],
                              capture_output=True, text=True, timeout=120)
    return done.stdout


@pytest.fixture(scope="module")
def table():
    from headscope.capture.datasets import repeated_random_tokens

    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    return classify_heads(model, repeated_random_tokens(4, 6, vocab_size=99, seed=0), n_bootstrap=100)


def test_role_heatmap_carries_the_scores_and_intervals(table):
    fig = role_heatmap(table)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == len(table.roles)
    first = heatmaps[0]
    role = table.roles[0]
    row = table.head(1, 2)
    assert first.z[1][2] == pytest.approx(row.scores[role])
    lo, hi = row.intervals[role]
    assert f"L1H2<br>{role} {row.scores[role]:.3f} [{lo:.3f}, {hi:.3f}]" in first.text[1][2]
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == list(table.roles)


def test_pattern_figure_labels_both_axes_with_tokens():
    pattern = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
    fig = pattern_figure(pattern, ["<s>", " the", " cat"], "L0H0")
    assert list(fig.layout.xaxis.ticktext) == ["&lt;s&gt;", "·the", "·cat"]
    assert list(fig.layout.yaxis.ticktext) == list(fig.layout.xaxis.ticktext)
    z = fig.data[0].z
    assert z[2][1] == pytest.approx(0.3) and z[0][1] != z[0][1]  # the future is blank (NaN)
    with pytest.raises(ValueError, match="do not match"):
        pattern_figure(pattern, ["a", "b"], "x")


def test_pages_render_offline_in_chromium(table, tmp_path):
    heatmap_page, pattern_page = tmp_path / "roles.html", tmp_path / "pattern.html"
    write_html(role_heatmap(table), heatmap_page)
    write_html(pattern_figure(torch.eye(4), ["a", "b", "c", "d"], "L0H0"), pattern_page)
    for page in (heatmap_page, pattern_page):
        dom = rendered_dom(page)
        assert 'class="main-svg"' in dom, f"{page.name} did not render"
        assert "cdn.plot.ly" not in page.read_text()[:2000]


def test_bad_figure_paths_are_clear_errors(table, tmp_path):
    with pytest.raises(InputError, match="written as .html"):
        write_html(role_heatmap(table), tmp_path / "roles.png")
    with pytest.raises(InputError, match="does not exist"):
        write_html(role_heatmap(table), tmp_path / "missing" / "roles.html")
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.html"))


def test_cli_writes_pages_that_render(tmp_path):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(HookedTransformer(TINY_CONFIGS["llama-gqa"]), tmp_path / "tiny")
    runner = CliRunner()
    result = runner.invoke(cli, ["classify", str(checkpoint), "--seq-len", "12", "--num-prompts", "3",
                                 "--html", str(tmp_path / "roles.html")])
    assert result.exit_code == 0, result.output
    assert 'class="main-svg"' in rendered_dom(tmp_path / "roles.html")
    no_text = runner.invoke(cli, ["pattern", str(checkpoint), "L1H0", "--html", str(tmp_path / "p.html")])
    assert no_text.exit_code == 1 and "exactly one of --text or --prompt-file" in no_text.output


def test_flow_on_a_model_without_a_tokenizer_is_one_clear_line(tmp_path):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(HookedTransformer(TINY_CONFIGS["gpt2"]), tmp_path / "tiny")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("\n5 6 7\n")
    result = CliRunner().invoke(cli, ["flow", str(checkpoint), "--prompt-file", str(prompt),
                                      "--out", str(tmp_path / "flow.graphml")])
    assert result.exit_code == 1 and "no tokenizer" in result.output
    assert not (tmp_path / "flow.graphml").exists()


@pytest.mark.real_model
def test_flow_command_on_a_model_with_a_tokenizer(tmp_path, minilm_dir):
    import networkx as nx

    runner = CliRunner()
    outs = [tmp_path / "flow.graphml", tmp_path / "flow.gexf", tmp_path / "flow.html", tmp_path / "flow.svg",
            tmp_path / "flow.pdf"]
    args = ["flow", str(minilm_dir), "--text", "The cat sat on the mat.", "--method", "maxflow", "--top-k", "3"]
    result = runner.invoke(cli, args + [arg for out in outs for arg in ("--out", str(out))])
    assert result.exit_code == 0, result.output
    graph = nx.read_graphml(outs[0])
    assert graph.nodes["L0P2"]["token"] == "cat" and "flow" in graph.nodes["L0P2"]
    assert 'class="main-svg"' in rendered_dom(outs[2])
    assert outs[3].read_text().startswith("<svg") and "maxflow" in outs[3].read_text()
    assert outs[4].read_bytes().startswith(b"%PDF")
    model, good_out = str(minilm_dir), ["--out", str(tmp_path / "x.graphml")]
    cases = [
        (["--text", "   ", *good_out], "the prompt is empty"),
        (["--text", "The cat sat.", "--target-pos", "99", *good_out], "out of range"),
        (["--text", "The cat sat.", "--out", str(tmp_path / "g.xyz")], "unknown output format '.xyz'"),
        (["--text", "The cat sat.", "--out", str(tmp_path / "missing" / "g.graphml")], "does not exist"),
    ]
    for options, message in cases:
        result = runner.invoke(cli, ["flow", model, *options])
        assert result.exit_code == 1 and message in result.output, (options, result.output)
    assert not (tmp_path / "x.graphml").exists() and not list(tmp_path.rglob("*.tmp"))


def test_ablation_pages_render(tmp_path):
    from headscope.analysis.ablation import ablate, sweep
    from headscope.capture.datasets import repeated_random_tokens
    from headscope.viz import ablation_figure

    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    data = repeated_random_tokens(4, 6, vocab_size=99, seed=0)
    swept = sweep(model, data, "zero", "loss", n_bootstrap=20)
    heatmap = ablation_figure(swept, 2, 4)
    assert heatmap.data[0].type == "heatmap" and heatmap.data[0].z[1][2] == pytest.approx(swept.effects[6].delta)
    bars = ablation_figure(ablate(model, data, [(0, 1), (1, 2)], "zero", "loss", n_bootstrap=20), 2, 4)
    assert bars.data[0].type == "bar" and list(bars.data[0].x) == ["L0H1,L1H2"]
    for name, fig in (("sweep.html", heatmap), ("set.html", bars)):
        write_html(fig, tmp_path / name)
        assert 'class="main-svg"' in rendered_dom(tmp_path / name)


def test_static_figures_are_real_svg_and_pdf(tmp_path):
    import xml.etree.ElementTree as ElementTree

    from headscope.viz import write_image

    fig = pattern_figure(torch.tensor([[1.0, 0.0], [0.3, 0.7]]), ["<s>", "cat"], "L0H0 on two tokens")
    write_image(fig, tmp_path / "pattern.svg")
    write_image(fig, tmp_path / "pattern.pdf")
    root = ElementTree.parse(tmp_path / "pattern.svg").getroot()
    assert root.tag.endswith("svg") and "L0H0 on two tokens" in (tmp_path / "pattern.svg").read_text()
    pdf = (tmp_path / "pattern.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 2000
    with pytest.raises(InputError, match="a static figure is written as"):
        write_image(fig, tmp_path / "pattern.bmp")
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "pattern.bmp").exists()


def test_flow_figure_colours_by_the_graphs_node_value():
    """A route graph names `contribution` as its node value; the figure colours and labels by it."""
    from headscope.analysis.routes import information_routes
    from headscope.viz import flow_figure

    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    graph = information_routes(model, torch.tensor([[3, 17, 5, 42, 8]]), threshold=0.05)
    fig = flow_figure(graph, "routes")
    markers = fig.data[-1]
    assert list(markers.marker.color) == [data["contribution"] for _, data in graph.nodes(data=True)]
    assert markers.marker.colorbar.title.text == "contribution"
    assert max(markers.marker.color) == 1.0
