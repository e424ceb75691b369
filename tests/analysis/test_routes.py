"""Information-flow routes: thresholds, connectivity, weights equal to the contribution scores."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

import headscope
from headscope.analysis.contributions import attention_scores, capture_residuals, decompose_layer, mlp_scores
from headscope.analysis.routes import attention_node, information_routes, input_contributions, residual_node
from headscope.errors import InputError

TOKENS = torch.tensor([[3, 17, 5, 42, 8, 17, 5, 60, 11, 23]])


@pytest.mark.parametrize("threshold", [0.02, 0.1])
def test_edges_pass_the_threshold_and_reach_the_prediction(tiny_model, threshold):
    graph = information_routes(tiny_model, TOKENS, target=7, threshold=threshold)
    top = residual_node(tiny_model.cfg.n_layers, 7)
    assert graph.number_of_edges() > 0
    assert all(weight >= threshold for _, _, weight in graph.edges(data="weight"))
    assert all(node == top or nx.has_path(graph, node, top) for node in graph.nodes)
    assert graph.nodes[top]["contribution"] == 1.0
    assert graph.graph["node_value"] == "contribution" and graph.graph["n_layers"] == tiny_model.cfg.n_layers
    components = {c for _, _, c in graph.edges(data="component")}
    assert components <= {f"L{l}H{h}" for l in range(2) for h in range(4)} | {"MLP0", "MLP1", "residual"}
    for node, data in graph.nodes(data=True):
        assert data["layer"] >= 0 and 0 <= data["position"] < 10 and 0 <= data["contribution"] <= 1 + 1e-6  # float32 normalisation


def test_edge_weights_are_the_contribution_scores(tiny_model):
    """Each kept edge carries the normalised proximity `attention_scores` / `mlp_scores` give directly."""
    graph = information_routes(tiny_model, TOKENS, target=-1, threshold=1e-4)
    layer, last = tiny_model.cfg.n_layers - 1, 9
    dec = decompose_layer(tiny_model, layer, capture_residuals(tiny_model, TOKENS)[layer])
    separate_mlp = dec.mlp_out is not None and not tiny_model.cfg.parallel_attn_mlp
    if separate_mlp:
        scores = mlp_scores(dec, range(last, last + 1))
        edges = graph.get_edge_data(attention_node(layer, last), residual_node(layer + 1, last))
        assert edges["residual"]["weight"] == pytest.approx(float(scores.residual[0]), abs=1e-6)
    end = attention_node(layer, last) if separate_mlp else residual_node(layer + 1, last)
    scores = attention_scores(dec, range(last, last + 1))
    kept = 0
    for head in range(tiny_model.cfg.n_heads):
        for key in range(10):
            value = float(scores.heads[head, 0, key])
            data = graph.get_edge_data(residual_node(layer, key), end) or {}
            if value >= 1e-4:
                assert data[f"L{layer}H{head}"]["weight"] == pytest.approx(value, abs=1e-6)
                kept += 1
            else:
                assert f"L{layer}H{head}" not in data
    assert kept > 0


def test_contributions_propagate_down_the_route(tiny_model):
    graph = information_routes(tiny_model, TOKENS, target=5, threshold=0.05)
    for node in graph.nodes:
        if graph.out_degree(node):
            expected = sum(w * graph.nodes[v]["contribution"] for _, v, w in graph.out_edges(node, data="weight"))
            assert graph.nodes[node]["contribution"] == pytest.approx(expected)
    inputs = input_contributions(graph, 10)
    assert inputs.shape == (10,) and inputs.sum() <= 1 + 1e-6 and inputs[6:].sum() == (0 if tiny_model.cfg.causal else inputs[6:].sum())


def test_routes_refuse_bad_arguments(tiny_model):
    with pytest.raises(InputError, match="threshold"):
        information_routes(tiny_model, TOKENS, threshold=0.0)
    with pytest.raises(InputError, match="target position 10"):
        information_routes(tiny_model, TOKENS, target=10)


def test_toy_induction_route_runs_through_the_circuit():
    """On repeated random tokens, the second occurrence's prediction is routed through a layer-1 head from
    the induction target, and that position through the previous-token head L0H1 from the token before."""
    model = headscope.load_model("toy-induction-2l")
    generator = torch.Generator().manual_seed(0)
    half = torch.randint(10, model.cfg.d_vocab, (12,), generator=generator)
    tokens = torch.cat([torch.tensor([0]), half, half])[None]
    graph = information_routes(model, tokens, target=17)  # token of position 5, repeated: predicts position 6's
    induction = {c for c in (graph.get_edge_data(residual_node(1, 6), residual_node(2, 17)) or {})}
    assert any(c.startswith("L1H") for c in induction)
    assert "L0H1" in (graph.get_edge_data(residual_node(0, 5), residual_node(1, 6)) or {})
