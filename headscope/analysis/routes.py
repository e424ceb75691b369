"""Information-flow routes (Ferrando & Voita 2024): the part of the model one prediction runs through.

Starting from the residual stream at the predicted position after the last block, each node's incoming
terms are scored by their normalised proximity (see `contributions`): for the output of an attention
sublayer, every head's term from every earlier position and the residual; for the output of an MLP
sublayer, the MLP and the residual. Edges whose score reaches `threshold` are kept and their sources
walked in turn, layer by layer down to the embeddings, so the graph holds only what the prediction uses.

Nodes: `L{layer}P{pos}` is the residual entering block `layer` (`layer` = n_layers: the final residual,
before the final norm); `L{layer}P{pos}.attn` the residual after block `layer`'s attention (absent in
parallel blocks, where heads and MLP both read the block's input). Node attributes: `layer` (a float: l,
or l + 0.5 after the attention), `position`, `token`, `contribution` (the share of the prediction that
flows through the node: 1 at the prediction, and for any other node the sum over its kept out-edges of
weight times the contribution of the edge's end). Edges: `component` (a head name such as "L17H4",
"MLP12" or "residual") and `weight` (the normalised proximity). Several heads can join the same two
nodes, so the graph is a `networkx.MultiDiGraph` keyed by component (a `DiGraph` subclass).

The scores depend on the position only, not on which token is predicted: the token labels the route.

References
----------
Ferrando & Voita (2024), "Information Flow Routes: Automatically Interpreting Language Models at Scale",
EMNLP. Threshold 0.04 follows their figures of single predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import networkx as nx
import torch

from headscope.analysis.contributions import (
    CONTRIBUTION_MEMORY, LayerDecomposition, attention_scores, capture_stream, decompose_layer, mlp_scores,
    row_chunks, term_bytes,
)
from headscope.errors import InputError
from headscope.heads import head_name
from headscope.model.transformer import HookedTransformer

ROUTE_THRESHOLD = 0.04


def residual_node(layer: int, position: int) -> str:
    """The node of the residual entering block `layer` at `position`."""
    return f"L{layer}P{position}"


def attention_node(layer: int, position: int) -> str:
    """The node of the residual after block `layer`'s attention at `position`."""
    return f"L{layer}P{position}.attn"


@torch.no_grad()
def information_routes(model: HookedTransformer, tokens: torch.Tensor, target: int = -1,
                       threshold: float = ROUTE_THRESHOLD, token: int | None = None,
                       max_memory: int = CONTRIBUTION_MEMORY) -> nx.MultiDiGraph:
    """The route graph of the prediction at position `target` of one prompt (see the module docstring for
    nodes and edges). `token` labels the prediction (default: the model's most likely next token)."""
    if not 0 < threshold <= 1:
        raise InputError(f"a route threshold is a share of a node's input, in (0, 1]; got {threshold}",
                         parameter="threshold")
    residuals, mlp_outs = capture_stream(model, tokens)
    n_layers, n_pos = model.cfg.n_layers, residuals.shape[1]
    if not -n_pos <= target < n_pos:
        raise InputError(f"target position {target} is out of range for a prompt of {n_pos} tokens",
                         parameter="target")
    target %= n_pos
    text = model.to_str_tokens(tokens.flatten()) if model.tokenizer is not None else [""] * n_pos
    graph = nx.MultiDiGraph()
    _add_node(graph, residual_node(n_layers, target), float(n_layers), target, text)
    active = {target}
    for layer in reversed(range(n_layers)):
        dec = decompose_layer(model, layer, residuals[layer], None if mlp_outs is None else mlp_outs[layer])
        if dec.mlp_out is not None and not model.cfg.parallel_attn_mlp:
            active = _mlp_edges(graph, dec, active, threshold, text)
            end_of = partial(attention_node, layer)
        else:
            end_of = partial(residual_node, layer + 1)
        active = _attention_edges(graph, dec, active, threshold, text, end_of, max_memory)
    _set_contributions(graph, residual_node(n_layers, target))
    prediction = _prediction(model, residuals[-1, target], token)
    graph.graph.update(method="routes", target=target, threshold=threshold, n_layers=n_layers,
                       node_value="contribution", prediction=prediction[1], prediction_id=prediction[0])
    return graph


def _add_node(graph: nx.MultiDiGraph, name: str, layer: float, position: int, text: list[str]) -> None:
    if name not in graph:
        graph.add_node(name, layer=layer, position=position, token=text[position])


def _mlp_edges(graph, dec: LayerDecomposition, ends: set[int], threshold: float, text) -> set[int]:
    """Edges into the residual leaving block `dec.layer` at positions `ends`; returns the positions whose
    after-attention node was reached."""
    reached = set()
    for rows in row_chunks(sorted(ends), 1, 4096):
        scores = mlp_scores(dec, rows)
        for index, position in enumerate(rows):
            end = residual_node(dec.layer + 1, position)
            for component, weight in (("residual", scores.residual[index]), (f"MLP{dec.layer}", scores.mlp[index])):
                if weight >= threshold:
                    _add_node(graph, attention_node(dec.layer, position), dec.layer + 0.5, position, text)
                    graph.add_edge(attention_node(dec.layer, position), end, key=component, component=component,
                                   weight=float(weight))
                    reached.add(position)
    return reached


def _attention_edges(graph, dec: LayerDecomposition, ends: set[int], threshold: float, text,
                     end_of: Callable[[int], str], max_memory: int) -> set[int]:
    """Edges into the attention sublayer's output at positions `ends` (node `end_of(position)`): heads from
    every key position, the residual, and in a parallel block the MLP; returns the source positions."""
    reached = set()
    for rows in row_chunks(sorted(ends), term_bytes(dec), max_memory):
        scores = attention_scores(dec, rows)
        edges = []  # (source position, end position, component, weight)
        for head, row, key in (scores.heads >= threshold).nonzero().tolist():
            edges.append((key, rows.start + row, head_name(dec.layer, head), scores.heads[head, row, key]))
        for index, position in enumerate(rows):
            edges.append((position, position, "residual", scores.residual[index]))
            if scores.mlp is not None:
                edges.append((position, position, f"MLP{dec.layer}", scores.mlp[index]))
        for source, position, component, weight in edges:
            if weight < threshold:
                continue
            _add_node(graph, residual_node(dec.layer, source), float(dec.layer), source, text)
            graph.add_edge(residual_node(dec.layer, source), end_of(position), key=component,
                           component=component, weight=float(weight))
            reached.add(source)
    return reached


def _set_contributions(graph: nx.MultiDiGraph, top: str) -> None:
    """`contribution` of every node: 1 at the prediction, weighted sums of what each node feeds below it."""
    for node in sorted(graph.nodes, key=lambda n: -graph.nodes[n]["layer"]):
        graph.nodes[node]["contribution"] = 1.0 if node == top else sum(
            weight * graph.nodes[end]["contribution"] for _, end, weight in graph.out_edges(node, data="weight"))


def _prediction(model: HookedTransformer, final: torch.Tensor, token: int | None) -> tuple[int, str]:
    """(token id, text) of the predicted token: the model's most likely one unless given; (-1, "") for an
    encoder asked for none."""
    if token is None:
        if not model.cfg.has_unembed:
            return -1, ""
        hidden = model.ln_final(final[None]) if model.cfg.final_norm else final[None]
        token = int(model.unembed_hidden(hidden)[0].argmax())
    if not 0 <= token < model.cfg.d_vocab:
        raise InputError(f"token id {token} is out of range for a vocabulary of {model.cfg.d_vocab}",
                         parameter="token")
    text = model.to_string(torch.tensor([token])) if model.tokenizer is not None else str(token)
    return token, text


def input_contributions(graph: nx.MultiDiGraph, n_pos: int) -> torch.Tensor:
    """(pos,) the contribution of each input position's embedding node to the prediction (0 off the route)."""
    values = torch.zeros(n_pos, dtype=torch.float64)
    for node in (residual_node(0, position) for position in range(n_pos)):
        if node in graph:
            values[graph.nodes[node]["position"]] = graph.nodes[node]["contribution"]
    return values
