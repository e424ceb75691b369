"""The two runs every patching experiment starts from, and one head's attention recomputed from its inputs.

`prepare` runs the clean and the corrupted prompts once each, keeping what the experiment will splice
(each layer's residual stream in, each head's z, its queries, keys and values), and fixes the metric and
its two baselines. Noising runs the clean prompts and patches in corrupted activations ("what breaks the
behaviour"); denoising runs the corrupted prompts and patches in clean ones ("what restores it"). Either
way `base` is the run being patched and `source` the one activations come from.

`attend` is one head's causal (or bidirectional) softmax attention: patching a head's query, key or
value input, or its pattern, is the head's z recomputed with that one input taken from the other run,
so a query head of a grouped-query layer is patched alone although it shares its key/value head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headscope.analysis.metrics import COSINE, Metric, MetricFn, check_metric_fits, logit_diff_metric, pair_metric
from headscope.analysis.patching.pairs import PromptPairs
from headscope.errors import InputError
from headscope.model.attention import allowed_keys

INPUTS = ("q", "k", "v")


@dataclass(frozen=True)
class Run:
    """One run's tokens, output (what the metric reads) and cached activations by hook name."""

    tokens: torch.Tensor
    output: torch.Tensor
    cache: dict

    def resid(self, layer: int) -> torch.Tensor:
        return self.cache[f"blocks.{layer}.hook_resid_pre"]

    def z(self, layer: int) -> torch.Tensor:
        return self.cache[f"blocks.{layer}.attn.hook_z"]

    def head_input(self, model, layer: int, head: int, which: str) -> torch.Tensor:
        """A query head's q, k or v (prompts, pos, d_head), after RoPE for q and k."""
        names = _input_names(model, layer)
        index = head if which == "q" else head // model.blocks[layer].attn.group_size
        return self.cache[names[which]][:, :, index]


@dataclass(frozen=True)
class Prepared:
    """Both runs, which one is patched, the metric and its per-prompt values on the two runs."""

    clean: Run
    corrupted: Run
    denoise: bool
    mask: torch.Tensor | None
    real: torch.Tensor
    metric: Metric
    clean_values: torch.Tensor  # (pairs,)
    corrupted_values: torch.Tensor

    @property
    def base(self) -> Run:
        return self.corrupted if self.denoise else self.clean

    @property
    def source(self) -> Run:
        return self.clean if self.denoise else self.corrupted

    @property
    def base_values(self) -> torch.Tensor:
        return self.corrupted_values if self.denoise else self.clean_values

    def measure(self, model, output: torch.Tensor) -> torch.Tensor:
        """Per-prompt metric of a patched pass's output (same prompts as the base run)."""
        return self.metric.of(model, output, self.base.tokens, self.real, self.clean.output)


def _input_names(model, layer: int) -> dict[str, str]:
    rot = "rot_" if model.cfg.positional == "rotary" else ""
    prefix = f"blocks.{layer}.attn.hook_"
    return {"q": f"{prefix}{rot}q", "k": f"{prefix}{rot}k", "v": f"{prefix}v"}


def cache_names(model, layers, inputs: bool = True) -> list[str]:
    """Hook names a patching experiment keeps for `layers`: residual in and z, and q/k/v when `inputs`."""
    names = []
    for layer in layers:
        names += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_z"]
        names += list(_input_names(model, layer).values()) if inputs else []
    return names


def check_pairs(model, pairs: PromptPairs) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The pairs' shared mask (on the model's device) and the bool `real` of it; refuses unequal shapes."""
    if len(pairs) == 0:
        raise InputError("no prompt pairs")
    clean, corrupted = pairs.clean, pairs.corrupted
    same_mask = (clean.attention_mask is None) == (corrupted.attention_mask is None) and (
        clean.attention_mask is None or torch.equal(clean.attention_mask, corrupted.attention_mask))
    if clean.tokens.shape != corrupted.tokens.shape or not same_mask:
        raise InputError("clean and corrupted prompts must have the same length, pair by pair")
    mask = None if clean.attention_mask is None else clean.attention_mask.to(model.device)
    real = torch.ones_like(clean.tokens, dtype=torch.bool) if mask is None else mask.bool()
    return mask, real.to(model.device)


def resolve_pair_metric(model, pairs: PromptPairs, metric: str | MetricFn | Metric, clean_hidden, corrupted_hidden,
                        real) -> Metric:
    """A metric given by name (prompt-pair metrics, "cosine" for encoders), as a callable or a `Metric`."""
    if isinstance(metric, Metric) or callable(metric):
        chosen = metric if isinstance(metric, Metric) else Metric(getattr(metric, "__name__", "custom"), metric)
        check_metric_fits(model, chosen)
        return chosen
    if metric == "cosine" or not model.cfg.has_unembed:
        if metric != "cosine":
            raise InputError(f"this model (an encoder) has no logits for {metric!r}: use the cosine metric")
        return COSINE
    logit_diff = logit_diff_metric(pairs.answers, pairs.wrongs)
    lds = [float(logit_diff.of(model, h, pairs.clean.tokens, real, h).mean()) for h in (clean_hidden, corrupted_hidden)]
    return pair_metric(metric, pairs.answers, pairs.wrongs, *lds)


@torch.no_grad()
def prepare(model, pairs: PromptPairs, metric, denoise: bool, names: list[str]) -> Prepared:
    """Run the clean and corrupted prompts once each, keeping the hooks `names`; fix the metric."""
    mask, real = check_pairs(model, pairs)
    runs = {}
    for label, data in (("clean", pairs.clean), ("corrupted", pairs.corrupted)):
        tokens = data.tokens.to(model.device)
        hidden, cache = model.run_with_cache(tokens, names_filter=names, attention_mask=mask, return_type="hidden")
        runs[label] = (tokens, hidden, cache)
    chosen = resolve_pair_metric(model, pairs, metric, runs["clean"][1], runs["corrupted"][1], real)
    made = {}
    for label, (tokens, hidden, cache) in runs.items():
        output = hidden if chosen.reads == "hidden" else model(tokens, attention_mask=mask, return_type="auto")
        made[label] = Run(tokens, output, cache)
    values = {label: chosen.of(model, run.output, run.tokens, real, made["clean"].output) for label, run in made.items()}
    return Prepared(made["clean"], made["corrupted"], denoise, mask, real, chosen, values["clean"], values["corrupted"])


def attend(model, layer: int, head: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One head's attention from its q, k, v (prompts, pos, d_head): (z (prompts, pos, d_head), pattern
    (prompts, query, key)), as the model's explicit path makes it (soft-capping, padding keys, causal and
    window masks, the head's sink logit)."""
    attn = model.blocks[layer].attn
    scores = attn.cap(torch.einsum("bqd,bkd->bqk", q, k) * model.cfg.scale)
    queries = torch.arange(q.shape[1], device=q.device)
    allowed = real[:, None, :] & allowed_keys(queries, k.shape[1], model.cfg.causal, attn.window)
    pattern = attn.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), head)[0]
    return torch.einsum("bqk,bkd->bqd", pattern, v), pattern


def head_z_with(model, prepared: Prepared, layer: int, head: int, which: str, inputs_from: Run) -> torch.Tensor:
    """The head's z on the base run with its `which` input (q, k, v, or "pattern") taken from `inputs_from`."""
    base = prepared.base
    q, k, v = (base.head_input(model, layer, head, name) for name in INPUTS)
    if which == "pattern":
        other = [inputs_from.head_input(model, layer, head, name) for name in ("q", "k")]
        pattern = attend(model, layer, head, *other, v, prepared.real)[1]
        return torch.einsum("bqk,bkd->bqd", pattern, v)
    swapped = {name: (inputs_from if name == which else base).head_input(model, layer, head, name) for name in INPUTS}
    return attend(model, layer, head, swapped["q"], swapped["k"], swapped["v"], prepared.real)[0]
