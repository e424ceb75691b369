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

How they are computed. `sink_scores` makes every one of these per-prompt scores from ONE forward pass per
few prompts, without the layers' (head, query, key) patterns: hooks keep each layer's queries and keys (as
the scores read them: after QK-norm and RoPE) and values, and at the layer's `hook_z` the layer is scored a
chunk of query rows at a time, each chunk's pattern made by `Attention.pattern_rows` (the explicit path's
own soft-capping, window, causal and padding masks and sink column), sized so a chunk's float32
temporaries fit in `PATTERN_MEMORY`; then the layer's tensors are let go. No hook on a pattern or score is
added, so the model stays on its fused path (soft-capped models excepted: they have no fused path). Where
someone else's hook edits a layer's scores or pattern, the pattern the model then uses is read at
`hook_pattern` instead (it is formed anyway), so the scores follow the model as it ran. A head's output
norm o_h(i) = ||z_h(i) W_O^h|| comes from `hook_z`, its value norms ||f_h(x_j)|| from `hook_v` (one per
key/value head, shared by the query heads of a GQA group).

Each role's score function is a `SharedScore` part of `sink_scores`: called alone it runs the pass and
returns its part; `classify_heads` runs each joint function once per dataset in a call and hands every
role its part. That memo is a local dict of one classify call, so no cache outlives the model and prompts
it was computed from (a global cache keyed on object ids could hand a later call a stale result).

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

import torch

from headscope.analysis.role_registry import Role, SharedScore, pool_prompts
from headscope.capture.datasets import TokenDataset
from headscope.capture.statistics import Batch, EntryPlan, make_plans
from headscope.errors import InputError

GU_THRESHOLD = 0.3  # Gu et al.'s epsilon
DORMANT_SINK_MASS = 0.3  # the first-token mass a dormant head needs (Gu's sink threshold)
DORMANT_RELATIVE_NORM = 0.1  # its output norm relative to the layer's mean head output norm
DORMANT_SHARE = 0.5  # dormant on at least half the prompts
NORM_STATISTICS = ("previous_token", "attention_sink", "induction")  # built-in statistics norm-weighted here
PROMPTS_AT_ONCE = 4  # prompts per forward pass at most
PATTERN_MEMORY = 256 * 2**20  # bytes of one chunk of pattern rows' float32 temporaries (one row at least)
_CHUNK_COPIES = 4  # a chunk's temporaries alive at once: scores, masked scores, pattern, weighted pattern
_TINY = 1e-12  # a row whose terms all have norm 0 stays 0 instead of NaN


def gu_sink_entries(batch: Batch) -> EntryPlan:
    """A[t, 0] over every real query t, row 0 included (Gu et al.'s alpha_h)."""
    b, i = batch.real.nonzero(as_tuple=True)
    return EntryPlan(b, i, torch.zeros_like(i), batch.real)


@torch.no_grad()
def sink_scores(model, dataset: TokenDataset, memory: int = PATTERN_MEMORY,
                plan_dataset: TokenDataset | None = None) -> dict[str, torch.Tensor]:
    """Every per-prompt score of this module's roles, from one forward pass per `PROMPTS_AT_ONCE` prompts.

    By name, (prompts, layers, heads) float64 each: "dormant" (1 or 0), what it is judged on,
    "first_token_mass" (Gu's alpha on the prompt) and "relative_output_norm" (the head's mean output norm
    over the layer's mean head's), and "previous_token_norm", "attention_sink_norm", "induction_norm" (these
    three (layers, heads), the mean over the prompts that have counted queries, where some prompt has none).
    `memory`: bytes for one chunk of pattern rows' float32 temporaries; a chunk has one row at least.
    `plan_dataset`: the prompts whose tokens say which entries the norm-weighted statistics count (the probe,
    when `dataset` is its shuffled control, so the control is scored at the probe's induction targets);
    default `dataset` itself. It must have `dataset`'s shape and real positions."""
    cfg = model.cfg
    plan = dataset if plan_dataset is None else plan_dataset
    if plan.tokens.shape != dataset.tokens.shape or not torch.equal(plan.real, dataset.real):
        raise InputError("plan_dataset must have the scored prompts' shape and real positions")
    sums: dict[str, list] = {}
    counts: dict[str, list] = {}
    for rows, tokens, mask in dataset.batches(PROMPTS_AT_ONCE):
        one = _Pass(model, Batch(plan.tokens[rows], dataset.real[rows], dataset.has_bos, cfg.causal), memory)
        with model.hooks(one.hooks()):
            model(tokens.to(model.device), attention_mask=None if mask is None else mask.to(model.device),
                  return_type=None)
        for name, value in one.sums.items():
            sums.setdefault(name, []).append(value.cpu())
            counts.setdefault(name, []).append(one.counts[name].double())
    means = {name: torch.cat(sums[name]) / torch.cat(counts[name])[:, None, None] for name in sums}
    mass, output = means["first_token_mass"], means["output_norm"]
    relative = output / output.mean(2, keepdim=True).clamp(min=_TINY)  # against the layer's mean head
    scores = {"first_token_mass": mass, "relative_output_norm": relative,
              "dormant": ((mass > DORMANT_SINK_MASS) & (relative < DORMANT_RELATIVE_NORM)).double()}
    for stat in NORM_STATISTICS:
        scores[f"{stat}_norm"] = pool_prompts(means[stat])  # a prompt may have no counted query
    return scores


def _qk_names(cfg, layer: int) -> tuple[str, str]:
    """The hooks carrying a layer's queries and keys as the scores read them: after RoPE, else after QK-norm."""
    prefix = f"blocks.{layer}.attn."
    if cfg.positional == "rotary":
        return prefix + "hook_rot_q", prefix + "hook_rot_k"
    if cfg.qk_norm != "none":
        return prefix + "q_norm.hook_normalized", prefix + "k_norm.hook_normalized"
    return prefix + "hook_q", prefix + "hook_k"


def _head_norms(x: torch.Tensor, W_O: torch.Tensor, memory: int) -> torch.Tensor:
    """(batch, head, pos): ||x_h(p) W_O^h||_2 of x (batch, pos, head, d_head), a few positions at a time so
    that the (batch, head, positions, d_model) products fit in `memory` bytes."""
    batch, n_pos, heads, _ = x.shape
    step = max(1, memory // (batch * heads * W_O.shape[-1] * 4))
    return torch.cat([torch.einsum("bphd,hdm->bhpm", x[:, start : start + step].float(), W_O).norm(dim=-1)
                      for start in range(0, n_pos, step)], dim=-1)


def _in_rows(plan: EntryPlan, rows: range, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The plan's entries whose query is in `rows`: (prompt, query - rows.start, key) on `device`."""
    inside = (plan.query_idx >= rows.start) & (plan.query_idx < rows.stop)
    return tuple(t.to(device) for t in (plan.batch_idx[inside], plan.query_idx[inside] - rows.start,
                                         plan.key_idx[inside]))


class _Pass:
    """One forward pass over a batch of prompts: its hooks, and the per-prompt sums over counted queries they
    fill, (batch, layer, head) float64 on the model's device, with each sum's count of queries (batch,)."""

    def __init__(self, model, batch: Batch, memory: int) -> None:
        cfg, device = model.cfg, model.device
        self.model, self.memory = model, memory
        self.real = batch.real.to(device)
        plans = make_plans(NORM_STATISTICS, batch)
        self.counts = {"first_token_mass": batch.real.sum(1), "output_norm": batch.real.sum(1),
                       **{stat: plans[stat].queries.sum(1) for stat in NORM_STATISTICS}}
        self.sums = {name: torch.zeros(len(batch.real), cfg.n_layers, cfg.n_heads, dtype=torch.float64,
                                       device=device) for name in self.counts}
        n_pos = batch.real.shape[1]
        step = max(1, memory // (len(batch.real) * cfg.n_heads * n_pos * 4 * _CHUNK_COPIES))
        chunks = [range(start, min(start + step, n_pos)) for start in range(0, n_pos, step)]
        self.chunks = [(rows, {stat: _in_rows(plans[stat], rows, device) for stat in NORM_STATISTICS})
                       for rows in chunks]
        self.kept: dict[tuple[int, str], torch.Tensor] = {}  # one layer's inputs, until its hook_z

    def hooks(self) -> list:
        """(name, fn) for every layer: keep q, k (or the pattern, where another hook edits it) and v; score
        the layer at hook_z. Call before the hooks are attached: it checks which patterns are hooked."""
        hooks = []
        for layer, block in enumerate(self.model.blocks):
            prefix = f"blocks.{layer}.attn."
            edited = block.attn.hook_pattern.active or block.attn.hook_attn_scores.active
            names = {"pattern": prefix + "hook_pattern"} if edited else dict(zip("qk", _qk_names(self.model.cfg, layer)))
            hooks += [(name, self._keep(layer, what)) for what, name in {**names, "v": prefix + "hook_v"}.items()]
            hooks.append((prefix + "hook_z", self._score))
        return hooks

    def _keep(self, layer: int, what: str):
        def keep(x, hook):
            self.kept[layer, what] = x

        return keep

    def _score(self, z: torch.Tensor, hook) -> None:
        layer = int(hook.name.split(".")[1])
        attn = self.model.blocks[layer].attn
        kept = {what: self.kept.pop((layer, what)) for what in ("q", "k", "v", "pattern") if (layer, what) in self.kept}
        W_O = attn.W_O.float()
        value_norms = _head_norms(kept["v"].repeat_interleave(attn.group_size, dim=2), W_O, self.memory)
        output_norms = _head_norms(z, W_O, self.memory)  # ||z_h(i) W_O^h|| = ||sum_j A_ij f_h(x_j)||
        self.sums["output_norm"][:, layer] = (output_norms * self.real[:, None, :]).sum(-1)
        for rows, entries in self.chunks:
            self._add_rows(layer, self._pattern(attn, kept, rows).float(), value_norms, rows, entries)

    def _pattern(self, attn, kept: dict, rows: range) -> torch.Tensor:
        """(batch, head, rows, keys) of the layer's pattern; keys stop after the last row when causal."""
        keys = rows.stop if self.model.cfg.causal else self.real.shape[1]
        if "pattern" in kept:
            return kept["pattern"][:, :, rows.start : rows.stop, :keys]
        queries = torch.arange(rows.start, rows.stop, device=self.real.device)
        return attn.pattern_rows(kept["q"][:, rows.start : rows.stop], kept["k"][:, :keys], queries,
                                 self.real[:, :keys])

    def _add_rows(self, layer: int, pattern: torch.Tensor, value_norms: torch.Tensor, rows: range,
                  entries: dict) -> None:
        sums = self.sums
        sums["first_token_mass"][:, layer] += (pattern[..., 0] * self.real[:, None, rows.start : rows.stop]).sum(-1)
        weighted = pattern * value_norms[:, :, None, : pattern.shape[-1]]  # A_ij ||f(x_j)||
        totals = weighted.sum(-1).clamp(min=_TINY)  # (batch, head, rows)
        for stat, (b, i, j) in entries.items():
            sums[stat][:, layer].index_add_(0, b, (weighted[b, :, i, j] / totals[b, :, i]).double())


def norm_score(statistic: str) -> SharedScore:
    """A score function (model, dataset) -> (prompts, layers, heads): the built-in `statistic` (one of
    NORM_STATISTICS, an attention mass) computed on the norm-weighted pattern, per prompt."""
    if statistic not in NORM_STATISTICS:
        raise InputError(f"no norm-weighted score of {statistic!r}: one of {', '.join(NORM_STATISTICS)}")
    return SharedScore(sink_scores, f"{statistic}_norm")


# (prompts, layers, heads): 1 where the head is dormant on the prompt (module docstring), else 0.
dormant_scores = SharedScore(sink_scores, "dormant")

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
    "induction_norm", score=norm_score("induction"), threshold=0.4, null="shuffled",
    evidence="induction on the norm of A_ij f(x_j), normalised per row, instead of A_ij", citation=_NORM)
