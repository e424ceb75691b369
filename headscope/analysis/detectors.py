"""Evidence beyond attention: does an induction head copy?

An induction head attends to the token after an earlier occurrence of the current token; Olsson et al.
call it an induction head only if it also *copies* that token, raising its logit. `copying_scores`
measures the copying directly: the head's direct logit effect on the token it should copy.

For a query i whose induction target holds token t (on repeated random tokens: the second period, where
t is also the true next token), the head's output `hook_result[b, i, h]` is passed through the final
norm with its scale frozen at the value of that position (`ln_final.hook_scale[b, i]`; centred first
for LayerNorm, times the norm's weight), then through the unembedding: the score is that vector's
product with W_U[:, t] minus its mean over the vocabulary, i.e. how much the head alone raises t's logit
above an average token's. With a norm after attention (Gemma's sandwich, OLMo 2) the head's output first
goes through that norm the same way, its scale frozen at `blocks.{l}.ln1_post.hook_scale`. It is averaged over every such query of every prompt, in logits. Positive:
the head pushes the copied token; near zero: it attends without copying (or copies through later layers,
which this direct effect does not see).

References
----------
Olsson et al. (2022), "In-context Learning and Induction Heads", Transformer Circuits Thread
(induction heads: prefix matching plus copying; the copying eigenvalue score of the OV circuit).
Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits" (direct logit attribution).
"""

from __future__ import annotations

import torch

from headscope import distributed as distributed_run
from headscope.capture.datasets import TokenDataset, real_mask
from headscope.capture.occurrences import induction_target_pairs
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer


def copying_scores(model: HookedTransformer, dataset: TokenDataset, heads: list[tuple[int, int]],
                   batch_size: int = 8, distributed: bool | None = None) -> dict[tuple[int, int], float]:
    """Each head's mean direct logit effect (in logits) on the token its induction target holds.

    heads: (layer, head) pairs. Queries are those with an earlier occurrence of their token whose next token
    is also the query's own next token (every query of a repeated period of repeated random tokens), each
    counted once, with the latest such occurrence's next token as the copied token; a dataset
    with none is an InputError. Models without an unembedding (encoders) have no such effect.
    """
    if not model.cfg.has_unembed:
        raise InputError("copying scores need an unembedding; this model (an encoder) has none")
    bad = [(l, h) for l, h in heads if not (0 <= l < model.cfg.n_layers and 0 <= h < model.cfg.n_heads)]
    if bad:
        raise InputError(f"head L{bad[0][0]}H{bad[0][1]} does not exist in a model of {model.cfg.n_layers} "
                         f"layers x {model.cfg.n_heads} heads")
    split = distributed_run.active(distributed)  # each process sums its shard of the prompts
    if split:
        distributed_run.check_same_dataset(dataset)
    rows = distributed_run.shard(len(dataset)) if split else range(len(dataset))
    parts = distributed_run.gather(lambda: _copying_totals(model, dataset, rows, heads, batch_size), split)
    totals = {head: sum(part[0][head] for part in parts) for head in heads}
    n_queries = sum(part[1] for part in parts)
    if n_queries == 0:
        raise InputError("no query in this dataset repeats an earlier bigram: copying needs repeated tokens "
                         "(e.g. the repeated-random dataset)")
    return {head: total / n_queries for head, total in totals.items()}


def _copying_totals(model, dataset: TokenDataset, rows: range, heads, batch_size: int) -> tuple[dict, int]:
    """Each head's summed direct logit effect over the copy queries of the prompts `rows`, and their number."""
    totals = {head: 0.0 for head in heads}
    n_queries = 0
    for _, tokens, mask in dataset.batches(batch_size, within=rows):
        b, i, target = _copy_queries(tokens, mask, dataset.has_bos)
        if len(b):
            for head, value in _batch_effects(model, tokens, mask, heads, b, i, target).items():
                totals[head] += value
            n_queries += len(b)
    return totals, n_queries


def _copy_queries(tokens: torch.Tensor, mask: torch.Tensor | None, has_bos: bool):
    """(batch, query i, copied token) for queries with an earlier occurrence followed by the token that
    really follows i (any such occurrence; the latest one gives the entry)."""
    b, i, target = induction_target_pairs(tokens, mask, has_bos)
    n_pos = tokens.shape[1]
    real = real_mask(tokens, mask)
    keep = (i + 1 < n_pos)
    b, i, target = b[keep], i[keep], target[keep]
    keep = real[b, i + 1] & (tokens[b, target] == tokens[b, i + 1])
    b, i, target = b[keep], i[keep], target[keep]
    # One entry per query: the latest earlier occurrence (largest target).
    order = torch.argsort(target, descending=True, stable=True)
    key = b[order] * n_pos + i[order]
    first = torch.ones_like(key, dtype=torch.bool)
    sorted_key, by_key = torch.sort(key, stable=True)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    chosen = order[by_key[first]]
    return b[chosen], i[chosen], tokens[b[chosen], target[chosen]]


@torch.no_grad()
def _batch_effects(model, tokens, mask, heads, b, i, copied) -> dict[tuple[int, int], float]:
    """Summed direct effects of each head over the given queries of one batch.

    Hooks keep only the queries' rows of z and of the norm scales, and a head's output is formed on those
    rows alone: z W_O of every position would be (batch, pos, head, d_model) per layer (1.4 GB for 8 prompts
    of 8192 SmolLM2 tokens)."""
    device = model.device
    b, i = b.to(device), i.to(device)
    layers = sorted({layer for layer, _ in heads})
    names = [f"blocks.{layer}.attn.hook_z" for layer in layers]
    if model.cfg.final_norm:
        names.append("ln_final.hook_scale")
    if model.cfg.block_norms != "pre":
        names += [f"blocks.{layer}.ln1_post.hook_scale" for layer in layers]
    rows: dict[str, torch.Tensor] = {}

    def keep_rows(x, hook):
        rows[hook.name] = x[b, i]

    model.run_with_hooks(tokens.to(device), fwd_hooks=[(name, keep_rows) for name in names],
                         attention_mask=None if mask is None else mask.to(device), return_type=None)
    W_U = model.W_U.float()  # (d_model, d_vocab)
    directions = W_U[:, copied.to(device)] - W_U.mean(1, keepdim=True)  # (d_model, queries)
    out = {}
    for layer, head in heads:
        z = rows[f"blocks.{layer}.attn.hook_z"][:, head].float()  # (queries, d_head)
        x = z @ model.blocks[layer].attn.W_O[head].float()  # the head's output, (queries, d_model)
        if model.cfg.block_norms != "pre":
            x = frozen_output_norm(model, layer, x, rows[f"blocks.{layer}.ln1_post.hook_scale"])
        x = frozen_final_norm(model, x, None if not model.cfg.final_norm else rows["ln_final.hook_scale"])
        out[(layer, head)] = float((x * directions.T).sum())
    return out


def frozen_output_norm(model, layer: int, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A head's output x (..., d_model) as it enters the residual stream through the RMSNorm on attention's
    output (sandwich / output norms), that norm's scale (..., 1) frozen at the run's value."""
    return x / scale.float() * model.blocks[layer].ln1_post.w.float()


def frozen_final_norm(model, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The final norm as a linear map at fixed scale: centre (LayerNorm), divide by the scale, weight."""
    if scale is None:
        return x
    if model.cfg.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return x / scale.float() * model.ln_final.w.float()
