"""Layered graph diagrams: the drawn node colours are the method's own quantity, read from the figure."""

import networkx as nx
import numpy as np
import pytest
import torch

from headscope.analysis.composition import composition_graph
from headscope.analysis.path_ablation import measured_composition_graph
from headscope.analysis.flow import max_flow, layer_attention, token_flow
from headscope.capture.datasets import repeated_random_tokens
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from headscope.viz import layered_graph_figure, write_image
from tests.conftest import TINY_CONFIGS
from tests.viz.readback import ink_fraction, pdf_to_png, texts_outside_canvas


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedTransformer(TINY_CONFIGS["llama-gqa"]).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.tensor([[5, 17, 23, 5, 17, 40]])


def valued_trace(fig):
    """The node trace whose colours carry values (the one with a colour bar)."""
    [trace] = [t for t in fig.data if t.type == "scatter" and t.marker.colorbar.title.text]
    return trace


def test_maxflow_figure_colours_nodes_by_their_max_flow(model, tokens):
    built = token_flow(model, tokens, "maxflow", target=-1)
    fig = layered_graph_figure(built.graph)
    trace = valued_trace(fig)
    expected = max_flow(layer_attention(model, tokens), -1).numpy()  # the solver's own answer, not the graph's
    assert list(trace.x) == [0] * 6 and list(trace.y) == list(range(6))  # the input column, one node per position
    assert np.asarray(trace.marker.color) == pytest.approx(expected, abs=1e-8)
    assert "max-flow to position 5" in trace.marker.colorbar.title.text
    rollout = layered_graph_figure(token_flow(model, tokens, "rollout").graph)
    assert "rollout relevance" in valued_trace(rollout).marker.colorbar.title.text
    assert len(valued_trace(rollout).x) == 6 * (model.cfg.n_layers + 1)  # relevance exists at every node


def test_composition_figure_colours_heads_by_score_and_labels_roles(model):
    graph = composition_graph(model, "k", top_k=2)
    graph.nodes["L1H3"]["roles"] = "induction"
    graph.nodes["L0H1"]["roles"] = "previous_token;local"
    fig = layered_graph_figure(graph)
    trace = valued_trace(fig)
    scored = {(x, y): c for x, y, c in zip(trace.x, trace.y, trace.marker.color)}
    for head in range(4):
        expected = max(graph.edges[u, f"L1H{head}"]["weight"] for u in graph.predecessors(f"L1H{head}"))
        assert scored[(1, head)] == pytest.approx(expected)
    texts = [t for tr in fig.data if tr.type == "scatter" and tr.text for t in tr.text]
    assert "L1H3 ind" in texts and "L0H1 prev/local" in texts
    edges = [t for t in fig.data if t.mode == "lines"]
    assert sum(len(t.x) // 3 for t in edges) == graph.number_of_edges() == 8
    only_one = layered_graph_figure(graph, top_k=1)
    assert sum(len(t.x) // 3 for t in only_one.data if t.mode == "lines") == 4
    assert graph.number_of_edges() == 8  # the caller's graph is untouched


def test_measured_graph_is_signed_and_token_graphs_need_positions(model):
    data = repeated_random_tokens(4, 4, vocab_size=99, seed=0)
    measured = measured_composition_graph(model, data, "k", top_k=2)
    trace = valued_trace(layered_graph_figure(measured))
    bound = max(abs(e) for _, _, e in measured.edges(data="effect"))
    assert trace.marker.cmin == pytest.approx(-bound if (np.asarray(trace.marker.color) < 0).any() else 0.0)
    bare = nx.DiGraph()
    bare.add_node("a", layer=0)
    with pytest.raises(InputError, match="every node needs"):
        layered_graph_figure(bare)


def test_contribution_style_graphs_use_the_named_node_value(tmp_path):
    graph = nx.DiGraph(node_value="contribution", node_value_label="contribution to the prediction")
    for layer in range(3):
        for position, token in enumerate(["The", " cat", " sat"]):
            graph.add_node(f"L{layer}P{position}", layer=layer, position=position, token=token,
                           contribution=0.1 * (layer + 1) * (position + 1))
    graph.add_edge("L0P0", "L1P2", weight=0.7)
    graph.add_edge("L1P2", "L2P2", weight=0.2)
    fig = layered_graph_figure(graph, style="single", title="a route graph")
    trace = valued_trace(fig)
    assert np.asarray(trace.marker.color) == pytest.approx([0.1 * (l + 1) * (p + 1) for l in range(3) for p in range(3)])
    assert list(fig.layout.yaxis.ticktext) == ["The (0)", "·cat (1)", "·sat (2)"]
    for suffix in ("svg", "pdf", "png"):
        write_image(fig, tmp_path / f"route.{suffix}")
    assert texts_outside_canvas(tmp_path / "route.svg") == [] and "updatemenu" not in (tmp_path / "route.svg").read_text()
    assert ink_fraction(pdf_to_png(tmp_path / "route.pdf")) > 0.02
