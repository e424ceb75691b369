"""Role, effect and pattern figures: checked by their data, then written and read back (SVG text inside
the canvas and no menus, PDF rendered by pdftoppm to a PNG with ink, pages opened offline in Chromium)."""

import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from headscope.analysis import classify_heads
from headscope.analysis.ablation import ablate, sweep
from headscope.capture.datasets import repeated_random_tokens
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from headscope.viz import (attention_text_html, effects_figure, pattern_figure, role_heatmap, write_html,
                           write_image)
from tests.conftest import TINY_CONFIGS
from tests.viz.readback import ink_fraction, pdf_to_png, rendered_dom, texts_outside_canvas


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedTransformer(TINY_CONFIGS["gpt2"]).eval()


@pytest.fixture(scope="module")
def data():
    return repeated_random_tokens(4, 6, vocab_size=99, seed=0)


@pytest.fixture(scope="module")
def table(model, data):
    return classify_heads(model, data, n_bootstrap=100)


@pytest.fixture(scope="module")
def swept(model, data):
    return sweep(model, data, "zero", "loss", n_bootstrap=20)


def test_role_heatmap_is_one_panel_per_role_with_held_heads_outlined(table):
    fig = role_heatmap(table)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert [h.name for h in heatmaps] == list(table.roles)
    assert {h.coloraxis for h in heatmaps} == {"coloraxis"} and fig.layout.coloraxis.cmax == 1
    for trace, role in zip(heatmaps, table.roles):
        for row in table.heads:
            assert trace.z[row.layer][row.head] == pytest.approx(row.scores[role])
            assert list(trace.customdata[row.layer][row.head][:2]) == pytest.approx(list(row.intervals[role]), nan_ok=True)
    held = sum(len(row.roles) for row in table.heads)
    assert len(fig.layout.shapes) == 2 * held  # a black and a white outline per held role
    assert not fig.layout.updatemenus
    # the OV copying roles (scores in [-1, 1]) widen the scale and the title no longer says "fraction"
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.colorbar.title.text) == (-1, "score")


def test_effects_heatmap_carries_the_sweep_and_the_baseline(swept):
    fig = effects_figure(swept, 2, 4)
    z = fig.data[0].z
    for effect in swept.effects:
        (layer, head), = effect.heads
        assert z[head][layer] == pytest.approx(effect.delta)  # layers across, heads down
    caption = fig.layout.annotations[-1].text.replace("<br>", " ")
    assert f"baseline (clean model) loss = {swept.baseline:.4g}" in caption
    assert fig.data[0].zmid == 0 and "change in loss" in fig.data[0].colorbar.title.text


def test_effects_bars_for_head_sets_and_patching_json(model, data):
    bars = effects_figure(ablate(model, data, [(0, 1), (1, 2)], "zero", "loss", n_bootstrap=20), 2, 4)
    assert bars.data[0].type == "bar" and list(bars.data[0].y) == ["L0H1,L1H2"]
    patching = {"model": "tiny", "method": "activation-patching", "metric": "logit-diff", "meta": {"baseline": 1.5},
                "results": [{"heads": ["L0H0"], "value": 0.25}, {"heads": ["L1H3"], "value": -0.5}]}
    fig = effects_figure(json.dumps(patching), 2, 4)
    assert list(fig.data[0].x) == [-0.5, 0.25] and "baseline (clean model) logit-diff = 1.5" in \
        fig.layout.annotations[-1].text.replace("<br>", " ")
    with pytest.raises(InputError, match="does not exist"):
        effects_figure({"results": [{"heads": ["L5H0"], "value": 1.0}]}, 2, 4)


def test_pattern_grid_and_selector(model):
    tokens = ["<s>", " the", " cat", " sat"]
    patterns = {"L0H0": torch.eye(4), "L1H2": torch.tril(torch.ones(4, 4)) / torch.arange(1, 5)[:, None]}
    grid = pattern_figure(patterns, tokens, "two heads")
    assert [t.name for t in grid.data] == ["L0H0", "L1H2"] and all(t.visible is not False for t in grid.data)
    assert list(grid.layout.xaxis.ticktext) == ["&lt;s&gt;", "·the", "·cat", "·sat"]
    assert list(grid.layout.yaxis.ticktext) == list(grid.layout.xaxis.ticktext)
    assert grid.data[1].z[3][1] == pytest.approx(0.25) and np.isnan(grid.data[1].z[0][1])  # the future is blank
    assert not grid.layout.updatemenus
    page = pattern_figure(patterns, tokens, "two heads", selector=True)
    assert [b.label for b in page.layout.updatemenus[0].buttons] == ["L0H0", "L1H2"]
    assert [t.visible for t in page.data] == [True, False]
    with pytest.raises(InputError, match="do not match"):
        pattern_figure(torch.eye(3), ["a", "b"])


def test_attention_text_view_colours_tokens_by_the_query_row():
    pattern = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.6, 0.2]])
    snippet = attention_text_html(pattern, ["<a>", " b", " c"], query=-1, head="L0H1")
    alphas = [float(a) for a in __import__("re").findall(r"rgba\(33, 102, 172, ([\d.]+)\)", snippet)]
    assert alphas == pytest.approx([0.2 / 0.6, 1.0, 0.2 / 0.6], abs=1e-3)
    assert "&lt;a&gt;" in snippet and "position 2" in snippet and "outline" in snippet
    with pytest.raises(InputError, match="out of range"):
        attention_text_html(pattern, ["a", "b", "c"], query=3)


def static_figures(table, swept, model, data):
    tokens = [f"tok{i}" for i in range(8)]
    patterns = {f"L{l}H{h}": torch.softmax(torch.randn(8, 8), -1) for l, h in ((0, 0), (0, 1), (1, 2))}
    return {"roles": lambda s: role_heatmap(table, style=s), "sweep": lambda s: effects_figure(swept, 2, 4, style=s),
            "bars": lambda s: effects_figure(ablate(model, data, [(0, 1)], n_bootstrap=10), 2, 4, style=s),
            "patterns": lambda s: pattern_figure(patterns, tokens, "three heads of a tiny model", style=s)}


@pytest.mark.parametrize("style", ["single", "double"])
def test_static_svgs_keep_every_text_inside_and_have_no_menus(table, swept, model, data, style, tmp_path):
    for name, make in static_figures(table, swept, model, data).items():
        path = tmp_path / f"{name}.svg"
        write_image(make(style), path)
        text = path.read_text()
        assert text.startswith("<svg") and "updatemenu" not in text, name
        assert texts_outside_canvas(path) == [], name
        assert f'width="{336 if style == "single" else 672}"' in text[:300]  # 3.5 in or 7 in at 96 px per inch
    too_long = go.Figure(layout=dict(title=dict(text="a title far too long for the narrow canvas " * 3), width=300))
    write_image(too_long, tmp_path / "control.svg")
    assert texts_outside_canvas(tmp_path / "control.svg")  # the check can fail


def test_pdfs_render_to_pngs_with_ink(table, swept, tmp_path):
    write_image(role_heatmap(table, style="single"), tmp_path / "roles.pdf")
    write_image(effects_figure(swept, 2, 4), tmp_path / "sweep.pdf")
    for name in ("roles", "sweep"):
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert ink_fraction(pdf_to_png(tmp_path / f"{name}.pdf")) > 0.05, name
    empty = go.Figure(layout=dict(xaxis=dict(visible=False), yaxis=dict(visible=False), width=300, height=200,
                                  template="simple_white"))
    write_image(empty, tmp_path / "empty.pdf")
    assert ink_fraction(pdf_to_png(tmp_path / "empty.pdf")) < 0.001  # a blank page reads as blank
    write_image(role_heatmap(table), tmp_path / "roles.png", dpi=192)
    from PIL import Image

    assert Image.open(tmp_path / "roles.png").size[0] == 2 * 672


def test_pages_render_offline_in_chromium(table, tmp_path):
    heatmap_page, pattern_page = tmp_path / "roles.html", tmp_path / "pattern.html"
    write_html(role_heatmap(table, style="screen"), heatmap_page)
    write_html(pattern_figure({"L0H0": torch.eye(4), "L0H1": torch.eye(4)}, list("abcd"), selector=True), pattern_page)
    for page in (heatmap_page, pattern_page):
        dom = rendered_dom(page)
        assert 'class="main-svg"' in dom, f"{page.name} did not render"
        assert "cdn.plot.ly" not in page.read_text()[:2000]


def test_bad_figure_paths_are_clear_errors(table, tmp_path):
    with pytest.raises(InputError, match="written as .html"):
        write_html(role_heatmap(table), tmp_path / "roles.png")
    with pytest.raises(InputError, match="does not exist"):
        write_html(role_heatmap(table), tmp_path / "missing" / "roles.html")
    with pytest.raises(InputError, match="a static figure is written as"):
        write_image(role_heatmap(table), tmp_path / "roles.bmp")
    with pytest.raises(InputError, match="unknown figure style"):
        role_heatmap(table, style="poster")
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.html"))


def test_a_route_graph_is_drawn_coloured_by_its_nodes_contribution():
    """Routes name `contribution` as their node value (issue 15); the layered figure colours by it."""
    from headscope.analysis.routes import information_routes
    from headscope.viz import layered_graph_figure

    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    graph = information_routes(model, torch.tensor([[3, 17, 5, 42, 8]]), threshold=0.05)
    [trace] = [t for t in layered_graph_figure(graph).data if t.type == "scatter" and t.marker.colorbar.title.text]
    expected = sorted(data["contribution"] for _, data in graph.nodes(data=True))
    assert sorted(trace.marker.color) == pytest.approx(expected) and max(expected) == pytest.approx(1.0)
