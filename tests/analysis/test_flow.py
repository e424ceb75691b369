"""Rollout equals a hand computation; max-flow equals networkx's; graphs carry tokens and capacities."""

import pytest
import torch

from headscope.analysis.flow import (
    flow_graph, layer_attention, max_flow, networkx_max_flow, node_name, rollout, with_residual,
)
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS


def random_attention(n_layers: int, n_pos: int, seed: int, causal: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    attention = torch.rand(n_layers, n_pos, n_pos, generator=generator, dtype=torch.float64)
    attention = attention.tril() if causal else attention
    return attention / attention.sum(-1, keepdim=True)


def test_rollout_equals_a_hand_computation_on_two_layers():
    first = torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64)
    second = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    # 0.5 A + 0.5 I, rows already sum to one
    first_mixed = torch.tensor([[1.0, 0.0], [0.125, 0.875]], dtype=torch.float64)
    second_mixed = torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64)
    expected = second_mixed @ first_mixed  # [[1, 0], [0.34375, 0.65625]]
    result = rollout(torch.stack([first, second]))
    torch.testing.assert_close(result, expected)
    assert result[1].tolist() == pytest.approx([0.34375, 0.65625])


@pytest.mark.parametrize("seed", range(6))
def test_max_flow_equals_networkx_on_random_layered_graphs(seed):
    causal = seed % 2 == 0
    attention = random_attention(n_layers=2 + seed % 3, n_pos=5 + seed, seed=seed, causal=causal)
    for target in (-1, 2):
        ours = max_flow(attention, target)
        reference = networkx_max_flow(flow_graph(attention), target)
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_flow_is_bounded_by_the_target_and_causal():
    attention = random_attention(3, 6, seed=1)
    flows = max_flow(attention, target=3)
    assert (flows[4:] < 1e-8).all()  # later positions cannot reach position 3 in a causal model
    assert (flows <= 1 + 1e-8).all() and flows[3] > 0


def test_graph_nodes_and_edges_carry_their_attributes():
    attention = random_attention(2, 4, seed=2)
    graph = flow_graph(attention, tokens=["<s>", "a", "b", "c"]).graph
    assert graph.number_of_nodes() == 3 * 4
    node = graph.nodes[node_name(0, 2)]
    assert (node["layer"], node["position"], node["token"]) == (0, 2, "b")
    edge = graph.edges[node_name(0, 1), node_name(1, 3)]
    assert edge["capacity"] == pytest.approx(float(with_residual(attention)[0, 3, 1]))
    assert not graph.has_edge(node_name(0, 3), node_name(1, 1))  # causal: no edge from the future


@torch.no_grad()
def test_layer_attention_of_a_model_and_of_chosen_heads():
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    tokens = torch.randint(0, 99, (1, 7))
    every = layer_attention(model, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    torch.testing.assert_close(every[1], cache["blocks.1.attn.hook_pattern"][0].double().mean(0))
    chosen = layer_attention(model, tokens, heads=[(1, 2)])
    torch.testing.assert_close(chosen[0], torch.eye(7, dtype=torch.float64))
    torch.testing.assert_close(chosen[1], cache["blocks.1.attn.hook_pattern"][0, 2].double())
    with pytest.raises(InputError, match="target position 9 is out of range for a prompt of 7 tokens"):
        max_flow(every, target=9)
    with pytest.raises(InputError, match="per prompt"):
        layer_attention(model, torch.zeros(2, 3, dtype=torch.long))


@torch.no_grad()
def test_token_flow_annotates_nodes_and_prunes_edges():
    from headscope.analysis.flow import token_flow

    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["llama-gqa"]).eval()
    tokens = torch.randint(0, 99, (1, 6))
    attention = layer_attention(model, tokens)
    built = token_flow(model, tokens, method="maxflow", target=-1, top_k=2)
    graph = built.graph
    inputs = [graph.nodes[node_name(0, p)] for p in range(6)]
    assert [n["relevance"] for n in inputs] == pytest.approx(rollout(attention)[-1].tolist())
    assert [n["flow"] for n in inputs] == pytest.approx(max_flow(attention, -1).tolist(), abs=1e-8)
    assert max(graph.in_degree(n) for n in graph.nodes) <= 2
    assert graph.nodes[node_name(2, 5)]["relevance"] == pytest.approx(1.0)  # the target itself
    with pytest.raises(InputError, match="not both"):
        token_flow(model, tokens, threshold=0.1, top_k=2)
    with pytest.raises(InputError, match="unknown flow method"):
        token_flow(model, tokens, method="magic")


def test_gradient_weighted_attention_equals_a_direct_autograd_computation():
    from headscope.analysis.flow import gradient_weighted_attention, token_flow

    torch.manual_seed(5)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    tokens = torch.randint(0, 99, (1, 6))
    weighted = gradient_weighted_attention(model, tokens, target=-1)
    # independently: torch.autograd.grad of the same logit with respect to the patterns themselves
    # (total derivatives: through each pattern's values and through later layers' queries and keys)
    patterns = {}
    with torch.enable_grad(), model.hooks([(lambda n: n.endswith("hook_pattern"),
                                            lambda p, hook: patterns.__setitem__(hook.name, p))]):
        logits = model(tokens)
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(2)]
        grads = torch.autograd.grad(logits[0, -1, logits[0, -1].argmax()], [patterns[n] for n in names])
    for layer, (name, grad) in enumerate(zip(names, grads)):
        expected = (patterns[name].detach() * grad)[0].clamp(min=0).double().mean(0)
        torch.testing.assert_close(weighted[layer], expected)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    graph = token_flow(model, tokens, "rollout", gradient=True).graph
    assert graph.graph["weighting"] == "gradient"


@pytest.mark.parametrize("method", ["alti", "norm", "value-zeroing"])
def test_token_flow_of_contributions_chains_the_layer_matrices(tiny_model, method):
    from headscope.analysis.contributions import chain, token_contributions
    from headscope.analysis.flow import token_flow

    tokens = torch.tensor([[3, 17, 5, 42, 8, 17]])
    built = token_flow(tiny_model, tokens, method=method, target=4, threshold=0.01)
    matrices = token_contributions(tiny_model, tokens, method)
    inputs = [built.graph.nodes[node_name(0, p)]["relevance"] for p in range(6)]
    assert inputs == pytest.approx(chain(matrices)[4].tolist(), abs=1e-6)
    assert built.graph.graph["node_value"] == "relevance" and built.graph.graph["method"] == method
    assert all(w > 0.01 for _, _, w in built.graph.edges(data="weight"))
    with pytest.raises(InputError, match="head selection"):
        token_flow(tiny_model, tokens, method=method, heads=[(0, 1)])


def test_token_flow_routes_and_refusals(tiny_model):
    from headscope.analysis.flow import token_flow
    from headscope.analysis.routes import ROUTE_THRESHOLD

    tokens = torch.tensor([[3, 17, 5, 42, 8, 17]])
    built = token_flow(tiny_model, tokens, method="routes")
    assert built.graph.graph["threshold"] == ROUTE_THRESHOLD and built.graph.graph["node_value"] == "contribution"
    assert built.n_layers == tiny_model.cfg.n_layers and built.n_pos == 6
    with pytest.raises(InputError, match="top_k pruning does not apply"):
        token_flow(tiny_model, tokens, method="routes", top_k=2)
    with pytest.raises(InputError, match="gradient weighting"):
        token_flow(tiny_model, tokens, method="routes", gradient=True)


@torch.no_grad()
def test_top_k_keeps_the_k_strongest_edges_into_every_node():
    from headscope.analysis.flow import token_flow

    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    tokens = torch.randint(0, 99, (1, 6))
    mixed = with_residual(layer_attention(model, tokens))
    for k in (1, 2):
        graph = token_flow(model, tokens, "rollout", top_k=k).graph
        for layer in (1, 2):
            for i in range(6):  # edges into (layer, i) come from (layer - 1, j), weight mixed[layer - 1, i, j]
                row = mixed[layer - 1, i]
                strongest = sorted((float(w), j) for j, w in enumerate(row.tolist()) if w > 0)[::-1][:k]
                kept = sorted((w, graph.nodes[u]["position"]) for u, _, w in
                              graph.in_edges(node_name(layer, i), data="weight"))[::-1]
                assert kept == [pytest.approx(e) for e in strongest]
    with pytest.raises(InputError, match="^top_k must be at least 1, got 0$") as refused:
        token_flow(model, tokens, "rollout", top_k=0)
    assert refused.value.parameter == "top_k"


def test_gradient_weighting_of_chosen_heads_and_its_refusal_for_an_encoder():
    from headscope.analysis.flow import gradient_weighted_attention

    torch.manual_seed(5)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    tokens = torch.randint(0, 99, (1, 6))
    every = gradient_weighted_attention(model, tokens)
    patterns = {}
    with torch.enable_grad(), model.hooks([(lambda n: n.endswith("hook_pattern"),
                                            lambda p, hook: patterns.__setitem__(hook.name, p))]):
        logits = model(tokens)
        grad = torch.autograd.grad(logits[0, -1, logits[0, -1].argmax()], [patterns["blocks.1.attn.hook_pattern"]])[0]
    head_3 = (patterns["blocks.1.attn.hook_pattern"].detach() * grad)[0, 3].clamp(min=0).double()
    chosen = gradient_weighted_attention(model, tokens, heads=[(1, 3)])
    torch.testing.assert_close(chosen[1], head_3)  # only head 3 of layer 1
    torch.testing.assert_close(chosen[0], torch.eye(6, dtype=torch.float64))  # no head chosen: the residual
    assert not torch.allclose(every[1], head_3)
    with pytest.raises(InputError, match=r"^gradient weighting needs an output logit; this model \(an encoder\) "
                                         r"has none$"):
        gradient_weighted_attention(HookedTransformer(TINY_CONFIGS["bert"]).eval(), tokens)


@torch.no_grad()
@pytest.mark.parametrize("method", ["rollout", "maxflow"])
def test_token_flow_of_chosen_heads_to_a_middle_target_by_hand(method):
    """Everything token_flow writes, computed here from the model's patterns without flow.py: the chosen heads'
    mean pattern (a layer without one is the identity), mixed half with the identity, every positive edge,
    the tokens on the nodes, the chained relevance to a target that is not the last position, networkx's
    max-flow into it, and the graph's description of what was run."""
    import networkx as nx

    from headscope import load_model
    from headscope.analysis.flow import token_flow

    model = load_model("toy-induction-2l")
    tokens = model.to_tokens("t3 t17 t5 t3 t17 t8")
    n_pos, target, heads = tokens.shape[1], 3, [(1, 2), (1, 0)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    layer1 = cache["blocks.1.attn.hook_pattern"][0, [2, 0]].double().mean(0)
    attention = torch.stack([torch.eye(n_pos, dtype=torch.float64), layer1])  # layer 0 has no chosen head
    mixed = [(0.5 * a + 0.5 * torch.eye(n_pos, dtype=torch.float64)) for a in attention]
    mixed = [m / m.sum(-1, keepdim=True) for m in mixed]

    graph = token_flow(model, tokens, method=method, target=target, heads=heads).graph
    words = model.to_str_tokens(tokens[0])
    assert [graph.nodes[node_name(0, p)]["token"] for p in range(n_pos)] == words
    edges = {(node_name(l, j), node_name(l + 1, i)): float(mixed[l][i, j])
             for l in range(2) for i in range(n_pos) for j in range(n_pos) if mixed[l][i, j] > 0}
    assert {(u, v): weight for u, v, weight in graph.edges(data="weight")} == pytest.approx(edges)
    downstream = torch.eye(n_pos, dtype=torch.float64)[target]  # node (l, p): share of the target it feeds
    for layer in (2, 1, 0):
        assert [graph.nodes[node_name(layer, p)]["relevance"] for p in range(n_pos)] == pytest.approx(downstream.tolist())
        if layer:
            downstream = downstream @ mixed[layer - 1]
    assert downstream[target + 1:].abs().max() == 0  # causal: nothing after the target feeds it
    meta = graph.graph
    assert (meta["n_layers"], meta["target"], meta["heads"], meta["method"]) == (2, target, "L1H2,L1H0", method)
    assert meta["weight"] == "attention with the residual" and meta["weighting"] == "attention"
    if method == "maxflow":
        flows = [nx.maximum_flow_value(graph, node_name(0, j), node_name(2, target), capacity="capacity")
                 for j in range(n_pos)]
        assert [graph.nodes[node_name(0, p)]["flow"] for p in range(n_pos)] == pytest.approx(flows, abs=1e-6)
        assert flows[target] > 0 and flows[-1] == 0
        assert (meta["node_value"], meta["node_value_label"]) == ("flow", f"max-flow to position {target}")
    else:
        assert (meta["node_value"], meta["node_value_label"]) == ("relevance", f"rollout relevance to position {target}")
    with pytest.raises(InputError, match="^prune with a threshold or with top_k, not both$") as refused:
        token_flow(model, tokens, threshold=0.1, top_k=2)
    assert refused.value.parameter == "top_k"
