"""Head composition: how much a later head reads what an earlier head writes (Elhage et al. 2021).

A head h writes x W_OV(h) into the residual stream (W_OV = W_V W_O); a later head h' reads the stream
through W_QK(h') = W_Q W_K^T (queries and keys) and W_OV(h') (values). With F the Frobenius norm:
- Q-composition: F(W_OV(h) W_QK(h')) / (F(W_OV(h)) F(W_QK(h'))): h's output shapes h''s queries;
- K-composition: F(W_OV(h) W_QK(h')^T) / (...): h's output shapes h''s keys (induction heads K-compose
  with previous-token heads);
- V-composition: F(W_OV(h) W_OV(h')) / (...): h''s values carry h's output.
A score is near 1/sqrt(d_model)-ish for unrelated random matrices and larger when the subspaces align.
The reading head's input norm scale (ln1.w) is folded into its W_Q, W_K, W_V, and LayerNorm's centring
too, as TransformerLens' `fold_ln` does; with grouped-query attention a head reads through its key/value
head. QK-norm weights are folded into W_Q and W_K and a post-attention norm's weight into the writer's W_O
(their division by the RMS is a positive factor per position, which these ratios of norms ignore). Products are never formed at d_model x d_model: every norm is a trace of d_head x d_head Gram
matrices (F(A B)^2 = tr(B^T A^T A B)).

References
----------
Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits", Transformer Circuits Thread.
"""

from __future__ import annotations

import math

import networkx as nx
import torch

from headscope.errors import InputError
from headscope.heads import head_name
from headscope.model.transformer import HookedTransformer
from headscope.provenance import graph_provenance

KINDS = ("q", "k", "v")
DEFAULT_TOP_K = 3  # edges kept into each reading head when no threshold is given


def reading_weights(model: HookedTransformer, layer: int) -> tuple[torch.Tensor, ...]:
    """W_Q, W_K, W_V of every query head of a layer, (head, d_model, d_head), with the norm folded in."""
    attn = model.blocks[layer].attn
    group = attn.group_size
    weights = [attn.W_Q, attn.W_K.repeat_interleave(group, 0), attn.W_V.repeat_interleave(group, 0)]
    weights = [w.detach().double() for w in weights]
    cfg = model.cfg
    if cfg.qk_norm != "none":  # w per d_head ("head") or per head and d_head ("all")
        weights[0] = weights[0] * attn.q_norm.w.detach().double().reshape(-1, 1, cfg.d_head)
        k_norm = attn.k_norm.w.detach().double().reshape(-1, 1, cfg.d_head)
        weights[1] = weights[1] * (k_norm.repeat_interleave(group, 0) if cfg.qk_norm == "all" else k_norm)
    if cfg.norm != "none" and not cfg.post_norm and cfg.block_norms != "output":
        scale = model.blocks[layer].ln1.w.detach().double()[None, :, None]
        weights = [w * scale for w in weights]
        if cfg.norm == "layernorm":  # the centring x - mean(x) is a projection folded into the weights
            weights = [w - w.mean(1, keepdim=True) for w in weights]
    return tuple(weights)


def writing_weights(model: HookedTransformer, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W_V (head, d_model, d_head) and W_O (head, d_head, d_model) of every head of a layer."""
    attn = model.blocks[layer].attn
    W_V = attn.W_V.detach().double().repeat_interleave(attn.group_size, 0)
    W_O = attn.W_O.detach().double()
    if model.cfg.block_norms != "pre":  # the norm after attention scales what the head writes
        W_O = W_O * model.blocks[layer].ln1_post.w.detach().double()
    return W_V, W_O


def composition_scores(model: HookedTransformer) -> torch.Tensor:
    """(3, layers, heads, layers, heads): Q-, K- and V-composition of writer (l, h) into reader (l', h');
    zero unless l < l'."""
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    scores = torch.zeros(3, L, H, L, H, dtype=torch.float64)
    writers = [writing_weights(model, layer) for layer in range(L)]
    readers = [reading_weights(model, layer) for layer in range(L)]
    for write_layer in range(L):
        V1, O1 = writers[write_layer]
        gram_v1 = V1.transpose(1, 2) @ V1  # (h, d, d)
        ov_norm = _product_norm(gram_v1, O1 @ O1.transpose(1, 2))  # F(V1 O1)
        for read_layer in range(write_layer + 1, L):
            Q2, K2, V2 = readers[read_layer]
            _, O2 = writers[read_layer]
            qk_norm = _product_norm(Q2.transpose(1, 2) @ Q2, K2.transpose(1, 2) @ K2)  # F(Q K^T)
            ov2_norm = _product_norm(V2.transpose(1, 2) @ V2, O2 @ O2.transpose(1, 2))  # F(V O)
            # writer (a, D x D = V1 O1) times reader factors; middle d x d blocks pair every a with every b
            o1_q2 = torch.einsum("adm,bme->abde", O1, Q2)  # O1 Q2
            o1_k2 = torch.einsum("adm,bme->abde", O1, K2)  # O1 K2
            o1_v2 = torch.einsum("adm,bme->abde", O1, V2)  # O1 V2
            gram_k2 = K2.transpose(1, 2) @ K2
            gram_q2 = Q2.transpose(1, 2) @ Q2
            gram_o2 = O2 @ O2.transpose(1, 2)
            q = _sandwich_norm(gram_v1, o1_q2, gram_k2)  # F(V1 O1 Q2 K2^T)
            k = _sandwich_norm(gram_v1, o1_k2, gram_q2)  # F(V1 O1 K2 Q2^T) = F(OV1 QK2^T)
            v = _sandwich_norm(gram_v1, o1_v2, gram_o2)  # F(V1 O1 V2 O2)
            scores[0, write_layer, :, read_layer] = q / (ov_norm[:, None] * qk_norm[None, :])
            scores[1, write_layer, :, read_layer] = k / (ov_norm[:, None] * qk_norm[None, :])
            scores[2, write_layer, :, read_layer] = v / (ov_norm[:, None] * ov2_norm[None, :])
    return scores


def _product_norm(gram_left: torch.Tensor, gram_right: torch.Tensor) -> torch.Tensor:
    """F(A B) for A (D x d) and B (d x D) from A^T A and B B^T: sqrt(tr(A^T A B B^T))."""
    return (gram_left * gram_right.transpose(-1, -2)).sum((-1, -2)).sqrt()


def _sandwich_norm(gram_a: torch.Tensor, middle: torch.Tensor, gram_c: torch.Tensor) -> torch.Tensor:
    """F(A M C^T) for every writer a and reader b: sqrt(tr(M^T (A^T A) M (C^T C))), (writers, readers)."""
    inner = gram_a[:, None] @ middle @ gram_c[None]  # (a, b, d, d)
    return (inner * middle).sum((-1, -2)).clamp(min=0).sqrt()


def composition_graph(model: HookedTransformer, kind: str = "k", threshold: float | None = None,
                      top_k: int | None = None, roles=None) -> nx.DiGraph:
    """Heads as nodes (`L{l}H{h}`, with layer, head and the roles of a `RoleTable` if given), edges from
    writer to reader weighted by the chosen composition score, kept above `threshold` or as the `top_k`
    strongest into each reader. Each head of layer 1 on carries `score`, its strongest composition score
    from any earlier head (`graph.graph["node_value"]`)."""
    if kind not in KINDS:
        raise InputError(f"unknown composition {kind!r}: use q, k or v")
    if threshold is not None and not math.isfinite(threshold):
        raise InputError(f"threshold must be a finite number, got {threshold}", parameter="threshold")
    scores = composition_scores(model)[KINDS.index(kind)]
    cfg = model.cfg
    graph = nx.DiGraph(composition=kind, node_value="score", weight=f"{kind.upper()}-composition score",
                       node_value_label=f"strongest {kind.upper()}-composition into the head",
                       **graph_provenance(model))
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            held = ";".join(roles.head(layer, head).roles) if roles is not None else ""
            graph.add_node(head_name(layer, head), layer=layer, head=head, roles=held)
    for read_layer in range(1, cfg.n_layers):
        for read_head in range(cfg.n_heads):
            incoming = scores[:read_layer, :, read_layer, read_head]  # (writer layer, writer head)
            candidates = [(float(incoming[l, h]), l, h) for l in range(read_layer) for h in range(cfg.n_heads)]
            candidates.sort(reverse=True)
            graph.nodes[head_name(read_layer, read_head)]["score"] = candidates[0][0]
            if top_k is not None:
                candidates = candidates[:top_k]
            for value, l, h in candidates:
                if threshold is None or value >= threshold:
                    graph.add_edge(head_name(l, h), head_name(read_layer, read_head), weight=value, composition=kind)
    return graph
