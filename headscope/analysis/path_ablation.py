"""Measured composition: the effect of removing one head's output from another head's input only.

`composition.py` scores how much a reader head could read a writer head from the weights alone; this
module measures it. For an edge (writer A, reader B), B's queries, keys and values are computed from the
residual stream minus A's direct output, every other head (and A's effect through other paths) staying as
it is, and the change in a metric is the edge's weight.

References
----------
Wang et al. (2022), "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2
small" (path patching, of which this is the ablation form).
"""

from __future__ import annotations

import networkx as nx
import torch

from headscope.analysis.composition import DEFAULT_TOP_K, composition_graph
from headscope.analysis.metrics import resolve_metric
from headscope.capture.datasets import TokenDataset, dataset_for_model
from headscope.errors import InputError
from headscope.heads import head_name, parse_head
from headscope.model.transformer import HookedTransformer

Edge = tuple[tuple[int, int], tuple[int, int]]
DEFAULT_PROMPTS = 8  # repeated-random prompts a measured composition graph is scored on when none are given


@torch.no_grad()
def path_ablation_effects(model: HookedTransformer, dataset: TokenDataset, edges: list[Edge],
                          metric: str = "loss") -> dict[Edge, float]:
    """For each edge (writer A, reader B): the change in the metric (mean over prompts) when A's output is
    removed from B's input only.

    One clean pass keeps each layer's residual stream and per-head outputs; each edge then costs two runs
    from B's layer: one to get B's z without A, one with that z spliced into an otherwise clean pass.
    """
    fn = resolve_metric(metric, dataset)
    bad = [(a, b) for a, b in edges if not a[0] < b[0]]
    if bad:
        (a, b) = bad[0]
        raise InputError(f"edge {head_name(*a)} -> {head_name(*b)}: a head can only feed heads of later layers")
    tokens = dataset.tokens.to(model.device)
    mask = None if dataset.attention_mask is None else dataset.attention_mask.to(model.device)
    real = dataset.real.to(model.device)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]
    names += [f"blocks.{l}.attn.hook_result" for l in {a[0] for a, _ in edges}]
    clean_logits, cache = model.run_with_cache(tokens, names_filter=names, attention_mask=mask)
    clean = fn(clean_logits, tokens, real, clean_logits).mean()
    effects = {}
    for (a_layer, a_head), (b_layer, b_head) in edges:
        without_a = cache[f"blocks.{b_layer}.hook_resid_pre"] - _head_write(model, cache, a_layer, a_head)
        kept = {}
        with model.hooks([(f"blocks.{b_layer}.attn.hook_z", lambda z, hook: kept.__setitem__("z", z[:, :, b_head]))]):
            model.run_from_layer(without_a, b_layer, attention_mask=mask, return_type=None)

        def splice(z, hook):
            z = z.clone()
            z[:, :, b_head] = kept["z"]
            return z

        with model.hooks([(f"blocks.{b_layer}.attn.hook_z", splice)]):
            logits = model.run_from_layer(cache[f"blocks.{b_layer}.hook_resid_pre"], b_layer, attention_mask=mask,
                                          return_type="logits")
        effects[((a_layer, a_head), (b_layer, b_head))] = float(fn(logits, tokens, real, clean_logits).mean() - clean)
    return effects


def _head_write(model: HookedTransformer, cache, layer: int, head: int) -> torch.Tensor:
    """What head `head` of `layer` adds to the residual stream (batch, pos, d_model): its output, or, through
    a norm on attention's output, the layer's write minus the write it makes without the head."""
    result = cache[f"blocks.{layer}.attn.hook_result"]  # (batch, pos, head, d_model)
    attn = model.blocks[layer].attn
    raw = result.sum(2) + attn.b_O if model.cfg.attn_out_bias else result.sum(2)
    return -model.blocks[layer].attention_write_change(raw, -result[:, :, head])


@torch.no_grad()
def measured_composition_graph(model: HookedTransformer, dataset: TokenDataset | None = None, kind: str = "k",
                               top_k: int = DEFAULT_TOP_K, metric: str = "loss", roles=None) -> nx.DiGraph:
    """The composition graph's `top_k` strongest edges into each head, weighted instead by their measured
    path-ablation effect (`effect`; the composition score stays as `composition_score`); each head carries
    `effect`, its strongest measured edge in (`graph.graph["node_value"]`).

    dataset: the prompts the effects are measured on; None takes `DEFAULT_PROMPTS` repeated-random prompts
    that fit the model's context (the loss of an induction circuit shows on them).
    """
    if dataset is None:
        dataset = dataset_for_model(model, "repeated-random", num_prompts=DEFAULT_PROMPTS)
    graph = composition_graph(model, kind, top_k=top_k, roles=roles)
    edges = [(parse_head(u), parse_head(v)) for u, v in graph.edges]
    effects = path_ablation_effects(model, dataset, edges, metric)
    for (u, v), effect in zip(list(graph.edges), effects.values()):
        graph.edges[u, v]["composition_score"] = graph.edges[u, v]["weight"]
        graph.edges[u, v]["weight"] = effect
        graph.edges[u, v]["effect"] = effect
    for node in graph.nodes:  # the node's quantity: its strongest measured edge in, with its sign
        measured = [graph.edges[u, node]["effect"] for u in graph.predecessors(node)]
        if measured:
            graph.nodes[node]["effect"] = max(measured, key=abs)
    graph.graph.update(weight=f"path-ablation effect on {metric}", node_value="effect",
                       node_value_label=f"strongest path-ablation effect on {metric} into the head")
    return graph
