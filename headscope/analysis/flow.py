"""Attention flow through the layers: rollout and max-flow (Abnar & Zuidema 2020); `token_flow` also
builds the graphs of contribution methods (`contributions`, `routes`) for export.

Each layer's attention, averaged over its heads (or over chosen heads), gets the residual connection
added and its rows renormalised: A' = normalise(0.5 A + 0.5 I). Nodes are (layer, position), layer 0
being the input; an edge from (l - 1, j) to (l, i) carries A'_l[i, j].
- Rollout multiplies those matrices: R = A'_L ... A'_1, so R[i, j] is how much output position i draws
  on input position j when attention is followed linearly through every path.
- Max-flow treats the same edges as capacities: the flow from input j to output position t is the most
  that can pass through the layered graph; unlike rollout it is limited by the narrowest layer.
The max-flow values come from SciPy's exact integer solver on capacities scaled to int32 (each capacity
is at most 1, so the rounding error of a flow is at most half a unit per edge of its minimum cut, about
5e-10 each); `networkx_max_flow` is the paper's way, kept as the reference the tests compare with.

References
----------
Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers", ACL.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

from headscope.analysis.contributions import TOKEN_METHODS, token_contributions
from headscope.analysis.routes import ROUTE_THRESHOLD, information_routes
from headscope.errors import InputError
from headscope.heads import head_name
from headscope.model.transformer import HookedTransformer
from headscope.provenance import graph_provenance
from headscope.notebook import html_table, short_repr

CAPACITY_SCALE = 2**30  # int32 capacities: flows of at most 1 fit with room to spare


def layer_attention(model: HookedTransformer, tokens: torch.Tensor,
                    heads: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """(layers, pos, pos) attention of one prompt, averaged over every head or over the chosen heads
    (a layer with none of them chosen counts as pure residual: the identity)."""
    if tokens.dim() == 2:
        if tokens.shape[0] != 1:
            raise InputError(f"attention flow is per prompt: got a batch of {tokens.shape[0]}")
        tokens = tokens[0]
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=names, return_type=None)
    chosen = {layer: [h for l, h in heads if l == layer] for layer in range(model.cfg.n_layers)} if heads else None
    layers = []
    for layer, name in enumerate(names):
        pattern = cache[name][0].double()  # (head, pos, pos)
        if chosen is None:
            layers.append(pattern.mean(0))
        elif chosen[layer]:
            layers.append(pattern[chosen[layer]].mean(0))
        else:
            layers.append(torch.eye(pattern.shape[-1], dtype=torch.float64))
    return torch.stack(layers)


def gradient_weighted_attention(model: HookedTransformer, tokens: torch.Tensor, target: int = -1,
                                heads: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """(layers, pos, pos) attention weighted by how much it matters for the output: the positive part of
    A * dy/dA, averaged over heads, where y is the logit of the model's own prediction at `target` (Chefer
    et al. 2021's weighting, which Abnar & Zuidema's flow then propagates)."""
    if not model.cfg.has_unembed:
        raise InputError("gradient weighting needs an output logit; this model (an encoder) has none")
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    patterns: dict[int, torch.Tensor] = {}

    def keep(pattern: torch.Tensor, hook) -> None:
        pattern.retain_grad()
        patterns[int(hook.name.split(".")[1])] = pattern

    with torch.enable_grad(), model.hooks([(lambda n: n.endswith("attn.hook_pattern"), keep)]):
        logits = model(tokens)
        position = _position(target, tokens.shape[1])
        logits[0, position, logits[0, position].argmax()].backward()
    model.zero_grad(set_to_none=True)
    layers = []
    for layer in range(model.cfg.n_layers):
        weighted = (patterns[layer].detach() * patterns[layer].grad)[0].clamp(min=0).double()  # (head, pos, pos)
        chosen = [h for l, h in heads if l == layer] if heads else list(range(weighted.shape[0]))
        layers.append(weighted[chosen].mean(0) if chosen else torch.eye(weighted.shape[-1], dtype=torch.float64))
    return torch.stack(layers)


def with_residual(attention: torch.Tensor) -> torch.Tensor:
    """0.5 A + 0.5 I with rows renormalised, for (..., pos, pos) attention."""
    eye = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
    mixed = 0.5 * attention + 0.5 * eye
    return mixed / mixed.sum(-1, keepdim=True)


def rollout(attention: torch.Tensor) -> torch.Tensor:
    """R = A'_L ... A'_1 for (layers, pos, pos) attention (the residual is added here)."""
    result = torch.eye(attention.shape[-1], dtype=attention.dtype, device=attention.device)
    for layer_matrix in with_residual(attention):
        result = layer_matrix @ result
    return result


@dataclass(frozen=True)
class FlowGraph:
    """The layered graph of one prompt: nodes `L{layer}P{pos}` with layer, position, token; edges with
    `capacity` (= `weight`)."""

    graph: nx.DiGraph
    n_layers: int
    n_pos: int

    def __repr__(self) -> str:
        g = self.graph
        return short_repr(self, {"method": g.graph.get("method", ""), "target": g.graph.get("target"),
                                 "layers": self.n_layers, "positions": self.n_pos, "nodes": g.number_of_nodes(),
                                 "edges": g.number_of_edges()})

    def _repr_html_(self) -> str:
        """The input tokens with the method's quantity (`graph.graph["node_value"]`), strongest first."""
        value = self.graph.graph.get("node_value", "relevance")
        rows = [{"position": p, "token": self.graph.nodes[node_name(0, p)].get("token", ""),
                 value: self.graph.nodes[node_name(0, p)].get(value)} for p in range(self.n_pos)]
        rows.sort(key=lambda row: -(row[value] or 0.0))
        return html_table(rows, caption=f"{self.graph.graph.get('method', 'flow')} to position "
                                        f"{self.graph.graph.get('target')}: {self.n_layers} layers, "
                                        f"{self.graph.number_of_edges()} edges")


def node_name(layer: int, position: int) -> str:
    """(layer, position) -> "L{layer}P{position}", a node of a layered flow graph."""
    return f"L{layer}P{position}"


def flow_graph(attention: torch.Tensor, tokens: list[str] | None = None, min_capacity: float = 0.0) -> FlowGraph:
    """The layered graph of (layers, pos, pos) attention with the residual added; edges below
    `min_capacity` are left out (never for max-flow values, which use every edge)."""
    return layered_graph(with_residual(attention), tokens, min_capacity)


def layered_graph(matrices: torch.Tensor, tokens: list[str] | None = None, min_weight: float = 0.0) -> FlowGraph:
    """The layered graph of (layers, pos, pos) matrices whose row i says how much position i of layer l + 1
    draws on each position of layer l (rows of mixed attention, or of contributions); edges of weight at
    most `min_weight` are left out."""
    mixed = matrices.cpu().numpy()
    n_layers, n_pos = mixed.shape[0], mixed.shape[-1]
    graph = nx.DiGraph()
    for layer in range(n_layers + 1):
        for pos in range(n_pos):
            graph.add_node(node_name(layer, pos), layer=layer, position=pos,
                           token="" if tokens is None else tokens[pos])
    for layer in range(1, n_layers + 1):
        queries, keys = np.nonzero(mixed[layer - 1] > min_weight)
        for i, j in zip(queries.tolist(), keys.tolist()):
            value = float(mixed[layer - 1][i, j])
            graph.add_edge(node_name(layer - 1, j), node_name(layer, i), capacity=value, weight=value)
    return FlowGraph(graph, n_layers, n_pos)


def max_flow(attention: torch.Tensor, target: int = -1) -> torch.Tensor:
    """(pos,) the maximum flow from each input position to output position `target`, exact to ~1e-9.

    Only positions between the source and the target can carry flow in a causal model, but the solver
    is given the whole graph, so bidirectional (encoder) attention works the same way.
    """
    mixed = with_residual(attention).cpu().numpy()
    n_layers, n_pos = mixed.shape[0], mixed.shape[-1]
    target = _position(target, n_pos)
    capacities = _capacity_matrix(mixed)
    sink = n_layers * n_pos + target
    flows = [maximum_flow(capacities, source, sink).flow_value / CAPACITY_SCALE for source in range(n_pos)]
    return torch.tensor(flows, dtype=torch.float64)


def _capacity_matrix(mixed: np.ndarray) -> csr_matrix:
    """Node (layer, pos) is layer * pos_count + pos; int32 capacities, as SciPy's solver requires (it
    silently mishandles wider integers)."""
    n_layers, n_pos = mixed.shape[0], mixed.shape[-1]
    rows, cols, values = [], [], []
    for layer in range(n_layers):
        queries, keys = np.nonzero(mixed[layer] > 0)
        rows.append(layer * n_pos + keys)
        cols.append((layer + 1) * n_pos + queries)
        values.append(np.rint(mixed[layer][queries, keys] * CAPACITY_SCALE))
    size = (n_layers + 1) * n_pos
    return csr_matrix((np.concatenate(values).astype(np.int32), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(size, size))


def networkx_max_flow(graph: FlowGraph, target: int = -1) -> torch.Tensor:
    """The same flows the paper's way: networkx's max-flow per input position on the full graph."""
    target = _position(target, graph.n_pos)
    sink = node_name(graph.n_layers, target)
    return torch.tensor([nx.maximum_flow_value(graph.graph, node_name(0, j), sink, capacity="capacity")
                         for j in range(graph.n_pos)], dtype=torch.float64)


def _position(target: int, n_pos: int) -> int:
    if not -n_pos <= target < n_pos:
        raise InputError(f"target position {target} is out of range for a prompt of {n_pos} tokens")
    return target % n_pos


FLOW_METHODS = ("rollout", "maxflow", *TOKEN_METHODS, "routes")


def token_flow(model: HookedTransformer, tokens: torch.Tensor, method: str = "rollout", target: int = -1,
               heads: list[tuple[int, int]] | None = None, threshold: float | None = None,
               top_k: int | None = None, gradient: bool = False) -> FlowGraph:
    """The flow graph of one prompt, ready to export; `graph.graph["node_value"]` names the node attribute
    a figure colours by.

    "rollout" and "maxflow" follow attention (Abnar & Zuidema): every node carries `relevance`, the rollout
    share of the target position it feeds; with "maxflow" input nodes also carry `flow`. "alti", "norm"
    and "value-zeroing" follow what each layer's output is made of (see `contributions`), heads summed, the
    layers chained; nodes carry `relevance` from the chained contributions. "routes" is the graph of the
    edges the prediction at `target` uses (see `routes`; `threshold` defaults to ROUTE_THRESHOLD there).
    Other graphs are then pruned for readability: edges below `threshold`, or beyond the `top_k` strongest
    into each node (flow values are computed on the full graph first)."""
    if method not in FLOW_METHODS:
        raise InputError(f"unknown flow method {method!r}: use one of {', '.join(FLOW_METHODS)}")
    if threshold is not None and top_k is not None:
        raise InputError("prune with a threshold or with top_k, not both", parameter="top_k")
    if threshold is not None and not math.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold}", parameter="threshold")
    if method not in ("rollout", "maxflow") and (heads is not None or gradient):
        raise InputError(f"a head selection and gradient weighting apply to attention flow, not to {method}",
                         parameter="heads" if heads is not None else "gradient")
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    text = model.to_str_tokens(tokens[0]) if model.tokenizer is not None else None
    if method == "routes":
        if top_k is not None:
            raise InputError("routes keep the edges above a threshold; top_k pruning does not apply to them",
                             parameter="top_k")
        graph = information_routes(model, tokens, target, ROUTE_THRESHOLD if threshold is None else threshold)
        graph.graph.update(graph_provenance(model))
        return FlowGraph(graph, model.cfg.n_layers, tokens.shape[1])
    if method in TOKEN_METHODS:
        mixed = token_contributions(model, tokens, method).double()
    else:
        attention = gradient_weighted_attention(model, tokens, target, heads) if gradient else \
            layer_attention(model, tokens, heads)
        mixed = with_residual(attention)
    target = _position(target, mixed.shape[-1])
    built = layered_graph(mixed, text, min_weight=threshold or 0.0)
    built.graph.graph.update(graph_provenance(model))
    for (layer, position), value in _relevance(mixed, target).items():
        built.graph.nodes[node_name(layer, position)]["relevance"] = value
    if method == "maxflow":
        for position, value in enumerate(max_flow(attention, target).tolist()):
            built.graph.nodes[node_name(0, position)]["flow"] = value
    if top_k is not None:
        _keep_top_k(built.graph, top_k)
    value, label = ("flow", f"max-flow to position {target}") if method == "maxflow" else \
        ("relevance", f"{method} relevance to position {target}")
    built.graph.graph.update(n_layers=built.n_layers, method=method, target=target,
                             weighting="gradient" if gradient else "attention",
                             heads="all" if heads is None else ",".join(head_name(l, h) for l, h in heads),
                             node_value=value, node_value_label=label,
                             weight="attention with the residual" if method in ("rollout", "maxflow") else
                             f"{method} contribution")
    return built


def _relevance(mixed: torch.Tensor, target: int) -> dict[tuple[int, int], float]:
    """Chained shares from every node to the target, for (layers, pos, pos) mixed matrices: node (l, p)
    gets (M_L ... M_{l+1})[target, p]."""
    n_layers, n_pos = mixed.shape[0], mixed.shape[-1]
    downstream = torch.eye(n_pos, dtype=mixed.dtype)
    relevance = {}
    for layer in range(n_layers, -1, -1):
        for position, value in enumerate(downstream[target].tolist()):
            relevance[(layer, position)] = value
        if layer > 0:
            downstream = downstream @ mixed[layer - 1]
    return relevance


def _keep_top_k(graph: nx.DiGraph, k: int) -> None:
    if k < 1:
        raise InputError(f"top_k must be at least 1, got {k}", parameter="top_k")
    for node in list(graph.nodes):
        incoming = sorted(graph.in_edges(node, data="weight"), key=lambda edge: edge[2], reverse=True)
        graph.remove_edges_from((u, v) for u, v, _ in incoming[k:])
