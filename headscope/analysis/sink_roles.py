"""Attention sinks as Gu et al. define them, dormant heads, and norm-weighted positional / induction roles.

- `attention_sink_gu` (Gu et al. 2024, sec. 3): alpha_h = the mean over *every* query t of A_h[t, 0], the
  attention on the first token, row 0 included (where a causal head has no choice: A[0, 0] = 1); a head is
  a sink when alpha_h > 0.3 on 64-token inputs (classify's default length). The built-in `attention_sink`
  (Xiao et al.) is the same attention on position 0 averaged over the queries i >= 1 only, with threshold
  0.6 and a uniform null; on T tokens the two differ by (1 - A-bar) / T: Gu's counts the forced row 0.
  Gu et al. measure natural text; `classify` measures its probe prompts (repeated random tokens by default).
- `dormant` (Guo et al. 2024, sec. 4): a head whose attention sits on the first token while its output is
  near zero, so it is effectively off on that input. On one prompt, with o_h(i) = ||sum_j A_h[i, j]
  f_h(x_j)||_2 the head's output at query i (f_h(x_j) = v_h(j) W_O^h, before b_O, which belongs to no head),
  the head is dormant when its Gu sink mass on that prompt is > 0.3 and its mean output norm over the
  prompt's real queries is < 0.1 of the mean of the layer's heads' mean output norms. The score is the
  fraction of prompts on which the head is dormant (Guo et al. show heads switch between active and
  dormant by input); a head holds the role when it is dormant on at least half of them. The 0.1 ratio is
  ours: Guo et al. identify dormant heads by their small output norm without one fixed cut-off.
- `previous_token_norm`, `attention_sink_norm`, `induction_norm` (Kobayashi et al. 2020): the built-in
  statistics of the same names, computed on N_h[i, j] = ||A_h[i, j] f_h(x_j)||_2 normalised over the keys
  of row i instead of on A_h[i, j]; a head that attends to BOS whose value there is tiny scores low.

All three families read the model's own pattern (`hook_pattern`, hence hooks, windows, soft-capping and
padding as the model applies them) and its values (`hook_v`, one per key/value head, shared by the query
heads of a GQA group). They are score roles: classify calls them on the probe prompts, a few at a time, each
layer scored from a hook as its pattern is made, so memory holds one layer's pattern (not every layer's:
at 8192 tokens SmolLM2's 30 layers of patterns would be 72 GB, one layer of one prompt is 2.4 GB).

References
----------
Gu, Pang, Du, Liu, Zhang, Wang, Lin & Lin (2024), "When Attention Sink Emerges in Language Models: An
Empirical View", arXiv:2410.10781.
Guo, Pai, Bai, Jiao, Jordan & Mei (2024), "Active-Dormant Attention Heads: Mechanistically Demystifying
Extreme-Token Phenomena in LLMs", arXiv:2410.13835.
Kobayashi, Kuribayashi, Yokoi & Inui (2020), "Attention is Not Only a Weight: Analyzing Transformers with
Vector Norms", EMNLP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from headscope.analysis.role_registry import Role
from headscope.capture.datasets import TokenDataset
from headscope.capture.statistics import Batch, EntryPlan, make_plans

GU_THRESHOLD = 0.3  # Gu et al.'s epsilon
DORMANT_SINK_MASS = 0.3  # the first-token mass a dormant head needs (Gu's sink threshold)
DORMANT_RELATIVE_NORM = 0.1  # its output norm relative to the layer's mean head output norm
DORMANT_SHARE = 0.5  # dormant on at least half the prompts
PROMPTS_AT_ONCE = 4  # prompts per forward pass at most
PATTERN_MEMORY = 256 * 2**20  # bytes of one layer's pattern of the prompts scored at once (one prompt at least)
_TINY = 1e-12  # a row whose terms all have norm 0 stays 0 instead of NaN


def gu_sink_entries(batch: Batch) -> EntryPlan:
    """A[t, 0] over every real query t, row 0 included (Gu et al.'s alpha_h)."""
    b, i = batch.real.nonzero(as_tuple=True)
    return EntryPlan(b, i, torch.zeros_like(i), batch.real)


def _terms(model, layer: int, pattern: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's (pattern A (batch, head, query, key), value norms ||f_h(x_j)||_2 (batch, head, key), head
    outputs o_h(i) = ||sum_j A[i, j] f_h(x_j)||_2 (batch, head, query)) from its pattern and hook_v."""
    attn = model.blocks[layer].attn
    v = v.repeat_interleave(attn.group_size, dim=2)  # GQA: query head h reads key/value head h // size
    values = torch.einsum("bphd,hdm->bhpm", v.float(), attn.W_O.float())  # f_h(x_j), (batch, head, key, d_model)
    outputs = torch.einsum("bhqk,bhkm->bhqm", pattern.float(), values).norm(dim=-1)
    return pattern.float(), values.norm(dim=-1), outputs


@torch.no_grad()
def _per_prompt(model, dataset: TokenDataset, score: Callable) -> torch.Tensor:
    """(prompts, layers, heads): `score(pattern, value_norms, outputs, batch)` (batch, head) of every layer.

    Each layer is scored inside the forward pass, from a hook on its pattern, and its pattern let go before
    the next layer's is made: one layer's pattern of a few prompts is held at a time, never every layer's."""
    cfg = model.cfg
    result = torch.zeros(len(dataset), cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    per_prompt = cfg.n_heads * dataset.tokens.shape[1] ** 2 * 4  # bytes of one layer's float32 pattern
    at_once = max(1, min(PROMPTS_AT_ONCE, PATTERN_MEMORY // per_prompt))
    for rows, tokens, mask in dataset.batches(at_once):
        batch = Batch(dataset.tokens[rows], dataset.real[rows], dataset.has_bos, cfg.causal)
        values: dict[int, torch.Tensor] = {}

        def keep_v(v, hook):
            values[int(hook.name.split(".")[1])] = v

        def score_layer(pattern, hook, rows=rows, batch=batch):
            layer = int(hook.name.split(".")[1])
            terms = _terms(model, layer, pattern, values.pop(layer))
            result[rows, layer] = score(*(t.cpu() for t in terms), batch).double()

        hooks = [(f"blocks.{l}.attn.hook_{name}", fn) for l in range(cfg.n_layers)
                 for name, fn in (("v", keep_v), ("pattern", score_layer))]
        with model.hooks(hooks):
            model(tokens.to(model.device), attention_mask=None if mask is None else mask.to(model.device),
                  return_type=None)
    return result


def _plan_mean(weights: torch.Tensor, plan: EntryPlan) -> torch.Tensor:
    """(batch, head): the sum of `weights` (batch, head, query, key) over the plan's entries of each prompt,
    over the prompt's counted queries (NaN where it has none)."""
    picked = weights[plan.batch_idx, :, plan.query_idx, plan.key_idx]  # (entries, head)
    sums = torch.zeros(weights.shape[:2], dtype=weights.dtype).index_add_(0, plan.batch_idx, picked)
    return sums / plan.queries.sum(1, keepdim=True).to(weights.dtype)


def _gu_mass(pattern: torch.Tensor, batch: Batch) -> torch.Tensor:
    return _plan_mean(pattern, gu_sink_entries(batch))


def _dormant(pattern: torch.Tensor, norms: torch.Tensor, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    real = batch.real[:, None, :].to(outputs.dtype)  # (batch, 1, query)
    mean_output = (outputs * real).sum(-1) / real.sum(-1)  # (batch, head)
    relative = mean_output / mean_output.mean(1, keepdim=True).clamp(min=_TINY)
    return ((_gu_mass(pattern, batch) > DORMANT_SINK_MASS) & (relative < DORMANT_RELATIVE_NORM)).double()


def dormant_scores(model, dataset: TokenDataset) -> torch.Tensor:
    """(prompts, layers, heads): 1 where the head is dormant on the prompt (module docstring), else 0."""
    return _per_prompt(model, dataset, _dormant)


def norm_weighted(pattern: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(batch, head, query, key): ||A[i, j] f(x_j)|| normalised over the keys of each row (Kobayashi et al.)."""
    weighted = pattern * norms[:, :, None, :]
    return weighted / weighted.sum(-1, keepdim=True).clamp(min=_TINY)


def norm_score(statistic: str) -> Callable:
    """A score function (model, dataset) -> (prompts, layers, heads): the built-in `statistic` (an attention
    mass) computed on the norm-weighted pattern, per prompt."""

    def score(model, dataset: TokenDataset) -> torch.Tensor:
        def one(pattern, norms, outputs, batch):
            plan = make_plans((statistic,), batch)[statistic]
            return _plan_mean(norm_weighted(pattern, norms), plan)

        values = _per_prompt(model, dataset, one)
        if values.isnan().any():  # a prompt with no counted query: pool the prompts as a capture does
            return values.nan_to_num(0.0).sum(0) / (~values.isnan()).sum(0).clamp(min=1)
        return values

    score.__name__ = f"{statistic}_norm_scores"
    return score


_NORM = "Kobayashi et al. (2020)"
ATTENTION_SINK_GU = Role(
    "attention_sink_gu", entries=gu_sink_entries, threshold=GU_THRESHOLD, null=None, encoder=False,
    evidence="mean attention on the first token over every query, row 0 included (Gu's alpha; attention_sink "
             "leaves row 0 out and asks 0.6); sink when > 0.3 on 64-token inputs",
    citation="Gu et al. (2024), arXiv:2410.10781")
DORMANT = Role(
    "dormant", score=dormant_scores, threshold=DORMANT_SHARE, encoder=False,
    evidence="share of prompts where the head's first-token mass (as attention_sink_gu) is > 0.3 and its mean "
             "output norm, of sum_j A_ij f(x_j), is < 0.1 of the layer's mean head output norm",
    citation="Guo et al. (2024), arXiv:2410.13835")
PREVIOUS_TOKEN_NORM = Role(
    "previous_token_norm", score=norm_score("previous_token"), threshold=0.4,
    evidence="previous_token on the norm of A_ij f(x_j), normalised per row, instead of A_ij", citation=_NORM)
ATTENTION_SINK_NORM = Role(
    "attention_sink_norm", score=norm_score("attention_sink"), threshold=0.6,
    evidence="attention_sink on the norm of A_ij f(x_j), normalised per row, instead of A_ij", citation=_NORM)
INDUCTION_NORM = Role(
    "induction_norm", score=norm_score("induction"), threshold=0.4,
    evidence="induction on the norm of A_ij f(x_j), normalised per row, instead of A_ij", citation=_NORM)
