"""Head ablation: remove heads' outputs and measure what a metric loses.

A head's output is its `hook_z` slice, `z[:, :, head]` (batch, pos, d_head), replaced by
- "zero": zeros;
- "mean": its mean over every real position of every prompt of the dataset (one d_head vector per head,
  computed once per call from a clean pass);
- "resample": its value on another prompt of the same dataset at the same position, the pairing a seeded
  derangement of the prompts (Chan et al.'s resampling ablation).
Metrics (`headscope.analysis.metrics`: loss, induction-loss, kl, logit-diff, cosine for encoders, or a callable) give one value
per prompt, so effects get bootstrap intervals over prompts.

"knockout" (attention-edge knockout) leaves a head's output alone and cuts only its attention to chosen key
positions: their scores are masked before the softmax, so the rest renormalises (a query row whose only
visible keys are cut is left as it is).

`sweep` ablates every head (or layer) one at a time, fast: the clean residual stream entering each layer
is kept from one clean pass, each ablated run starts there (`run_from_layer`) instead of re-running the
layers before, and several ablated variants share one forward pass along the batch dimension. It equals
the one-at-a-time `run_with_hooks` ablation (tests hold the two together).

References
----------
Olsson et al. (2022), "In-context Learning and Induction Heads" (ablating induction heads).
Chan et al. (2022), "Causal Scrubbing" (resampling ablation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from headscope import distributed as distributed_run
from headscope.analysis.intervals import bootstrap_interval
from headscope.analysis.metrics import Metric, MetricFn, check_metric_fits, resolve_metric
from headscope.analysis.stacking import edit_hook, run_stacked, split_metric, variants_per_pass
from headscope.capture.datasets import TokenDataset
from headscope.errors import InputError
from headscope.heads import head_name, parse_head
from headscope.io import strict_json
from headscope.model.transformer import HookedTransformer
from headscope.notebook import html_table, short_repr
from headscope.progress import ProgressFile, rank_path, run_fingerprint
from headscope.provenance import provenance

Heads = list[tuple[int, int]]
METHODS = ("zero", "mean", "resample")  # of a head's output; `knockout` cuts attention edges instead
SWEEP_MEMORY = 1 << 30  # bytes for the variants a sweep stacks in one pass, unless told otherwise


# ----- replacements --------------------------------------------------------------------------------------
@dataclass
class _Replacements:
    """What each ablated head's z becomes: zeros, its dataset mean, or another prompt's z."""

    method: str
    means: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (head, d_head)
    clean_z: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (prompts, pos, head, d_head)
    source: torch.Tensor | None = None  # resample: prompt b takes z from prompt source[b]

    def value(self, layer: int, head: int, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Replacement for z[:, :, head] of the prompts `rows` (indices into the dataset)."""
        if self.method == "zero":
            return torch.zeros_like(z[:, :, head])
        if self.method == "mean":
            return self.means[layer][head].to(z.dtype).expand_as(z[:, :, head])
        return self.clean_z[layer][self.source[rows], :, head].to(z.dtype)


def _derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation with no fixed point (each prompt takes another's activations)."""
    if n < 2:
        raise InputError("resample ablation needs at least two prompts")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        if not (order == torch.arange(n)).any():
            return order


@torch.no_grad()
def _clean_pass(model, dataset, layers, method, seed, want_resid: bool, reads: str):
    """One clean forward: its output (`reads`), each layer's residual stream in, and what the method needs."""
    names = [f"blocks.{l}.attn.hook_z" for l in layers] if method != "zero" else []
    names += [f"blocks.{l}.hook_resid_pre" for l in layers] if want_resid else []
    output, cache = model.run_with_cache(dataset.tokens.to(model.device), names_filter=names,
                                         attention_mask=_mask(dataset, model), return_type=reads)
    real = dataset.real.to(model.device)
    replacements = _Replacements(method)
    for layer in layers if method != "zero" else []:
        z = cache[f"blocks.{layer}.attn.hook_z"]
        if method == "mean":
            replacements.means[layer] = (z * real[:, :, None, None]).sum((0, 1)) / real.sum()
        else:
            replacements.clean_z[layer] = z
    if method == "resample":
        replacements.source = _derangement(len(dataset), seed).to(model.device)
    resid = {l: cache[f"blocks.{l}.hook_resid_pre"] for l in layers} if want_resid else {}
    return output, resid, replacements


def _mask(dataset: TokenDataset, model) -> torch.Tensor | None:
    return None if dataset.attention_mask is None else dataset.attention_mask.to(model.device)


# ----- results ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Effect:
    """The effect of ablating one set of heads: the metric, its change from the baseline, and a 95% interval."""

    heads: tuple[tuple[int, int], ...]
    value: float  # the metric with these heads ablated
    delta: float  # value - baseline
    ci: tuple[float, float]  # bootstrap 95% interval of delta over prompts


@dataclass(frozen=True)
class AblationResult:
    """Ablation effects of one model, method and metric; `to_json` is what `ablate --json` writes."""

    model: str
    method: str
    metric: str
    baseline: float
    effects: tuple[Effect, ...]
    meta: dict

    def to_json(self) -> str:
        """What `ablate --json` writes: {"model", "method", "metric", "baseline", "results": [{"heads",
        "value", "delta", "ci"}], "meta"}, a row of "results" per effect, heads by name."""
        return strict_json({
            "model": self.model, "method": self.method, "metric": self.metric, "baseline": self.baseline,
            "results": [{"heads": [head_name(l, h) for l, h in e.heads], "value": e.value, "delta": e.delta,
                         "ci": list(e.ci)} for e in self.effects],
            "meta": self.meta})

    @classmethod
    def from_json(cls, text: str | bytes) -> "AblationResult":
        """A result written by `to_json` (e.g. the file `ablate --json` wrote)."""
        try:
            data = json.loads(text)
            effects = tuple(Effect(tuple(parse_head(name) for name in row["heads"]), _number(row["value"]),
                                   _number(row["delta"]), (_number(row["ci"][0]), _number(row["ci"][1])))
                            for row in data["results"])
            return cls(str(data["model"]), str(data["method"]), str(data["metric"]), _number(data["baseline"]),
                       effects, dict(data["meta"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as err:
            raise InputError(f"not a headscope ablation result: {err}") from err

    def rows(self) -> list[dict]:
        """The effects as rows (heads, value, delta, ci), largest change first."""
        effects = sorted(self.effects, key=lambda e: abs(e.delta), reverse=True)
        return [{"heads": ",".join(head_name(l, h) for l, h in e.heads), "value": e.value, "delta": e.delta,
                 "95% interval": list(e.ci)} for e in effects]

    def __repr__(self) -> str:
        return short_repr(self, {"model": self.model, "method": self.method, "metric": self.metric,
                                 "baseline": self.baseline, "effects": len(self.effects)})

    def _repr_html_(self) -> str:
        return html_table(self.rows(), caption=f"{self.model}: {self.method} ablation, {self.metric} baseline "
                                               f"{self.baseline:.4g}; largest changes first")

    def grid(self, n_layers: int, n_heads: int) -> torch.Tensor:
        """(layers, heads) deltas of a single-head sweep."""
        out = torch.full((n_layers, n_heads), float("nan"))
        for effect in self.effects:
            if len(effect.heads) == 1:
                out[effect.heads[0]] = effect.delta
        return out


def bootstrap_mean_interval(deltas: torch.Tensor, n_bootstrap: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of per-prompt deltas, prompts resampled with replacement."""
    low, high = bootstrap_interval(deltas, None, n_bootstrap, seed)
    return float(low), float(high)


def _effect(heads, ablated: torch.Tensor, clean: torch.Tensor, n_bootstrap: int, seed: int) -> Effect:
    deltas = (ablated - clean).cpu()
    return Effect(tuple(heads), float(ablated.mean()), float(deltas.mean()),
                  bootstrap_mean_interval(deltas, n_bootstrap, seed))


def _number(value) -> float:
    """A JSON number back as a float; strict JSON writes a missing value (NaN) as null."""
    return math.nan if value is None else float(value)


# ----- the public functions --------------------------------------------------------------------------------
def _check(model, dataset, method, metric) -> Metric:
    """The metric resolved, after refusing an unknown method, an empty dataset or a metric the model cannot
    give (logits of an encoder)."""
    if method not in METHODS:
        raise InputError(f"unknown ablation method {method!r}: use zero, mean or resample")
    if len(dataset) == 0:
        raise InputError("the dataset is empty")
    chosen = resolve_metric(metric, dataset)
    check_metric_fits(model, chosen)
    return chosen


def _meta(model, dataset, seed) -> dict:
    return {"dataset": dataset.name, "dataset_meta": dataset.meta, "n_prompts": len(dataset),
            "seq_len": dataset.tokens.shape[1], "seed": seed, **provenance(model)}


@torch.no_grad()
def ablate(model: HookedTransformer, dataset: TokenDataset, heads: Heads, method: str = "zero",
           metric: str | MetricFn = "loss", *, seed: int = 0, n_bootstrap: int = 1000) -> AblationResult:
    """The metric with all of `heads` ablated together, against the clean model."""
    chosen = _check(model, dataset, method, metric)
    if not heads:
        raise InputError("no heads to ablate")
    layers = sorted({l for l, _ in heads})
    clean_output, _, replacements = _clean_pass(model, dataset, layers, method, seed, False, chosen.reads)
    tokens, real = dataset.tokens.to(model.device), dataset.real.to(model.device)
    rows = torch.arange(len(dataset), device=model.device)

    def hook_for(layer):
        def hook(z, hook):
            z = z.clone()
            for l, h in heads:
                if l == layer:
                    z[:, :, h] = replacements.value(l, h, z, rows)
            return z
        return hook

    output = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook_for(l)) for l in layers],
                                  attention_mask=_mask(dataset, model), return_type=chosen.reads)
    clean = chosen.of(model, clean_output, tokens, real, clean_output)
    effect = _effect(heads, chosen.of(model, output, tokens, real, clean_output), clean, n_bootstrap, seed)
    return AblationResult(model.name, method, chosen.name, float(clean.mean()), (effect,),
                          _meta(model, dataset, seed))


@torch.no_grad()
def knockout(model: HookedTransformer, dataset: TokenDataset, heads: Heads, key_positions: list[int],
             metric: str | MetricFn = "loss", *, seed: int = 0, n_bootstrap: int = 1000) -> AblationResult:
    """The metric when `heads` may no longer attend to `key_positions` (e.g. [0]: the BOS sink)."""
    chosen = _check(model, dataset, "zero", metric)
    if not heads or not key_positions:
        raise InputError("knockout needs heads and key positions")
    n_pos = dataset.tokens.shape[1]
    bad = [p for p in key_positions if not 0 <= p < n_pos]
    if bad:
        raise InputError(f"key position {bad[0]} is out of range for prompts of {n_pos} tokens")
    tokens, real = dataset.tokens.to(model.device), dataset.real.to(model.device)
    mask = _mask(dataset, model)
    clean_output = model(tokens, attention_mask=mask, return_type=chosen.reads)
    cut = torch.zeros(n_pos, dtype=torch.bool, device=model.device)
    cut[key_positions] = True

    def hook_for(layer):
        def hook(scores, hook):
            scores = scores.clone()
            lowest = torch.finfo(scores.dtype).min
            for l, h in heads:
                if l == layer:
                    visible = scores[:, h] > lowest  # (batch, query, key)
                    keeps_one = (visible & ~cut).any(-1, keepdim=True)  # rows that still see some key
                    scores[:, h] = scores[:, h].masked_fill(cut & keeps_one, lowest)
            return scores
        return hook

    layers = sorted({l for l, _ in heads})
    output = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_attn_scores", hook_for(l)) for l in layers],
                                  attention_mask=mask, return_type=chosen.reads)
    clean = chosen.of(model, clean_output, tokens, real, clean_output)
    effect = _effect(heads, chosen.of(model, output, tokens, real, clean_output), clean, n_bootstrap, seed)
    meta = _meta(model, dataset, seed) | {"key_positions": list(key_positions)}
    return AblationResult(model.name, "knockout", chosen.name, float(clean.mean()), (effect,), meta)


@torch.no_grad()
def sweep(model: HookedTransformer, dataset: TokenDataset, method: str = "zero", metric: str | MetricFn = "loss",
          *, by: str = "head", seed: int = 0, n_bootstrap: int = 1000, max_memory: int = SWEEP_MEMORY,
          distributed: bool | None = None, resume: str | Path | None = None,
          save_every_s: float = 30.0, progress: bool = False) -> AblationResult:
    """Every single head (by="head") or every whole layer (by="layer") ablated on its own.

    distributed: split the variants across the processes of a torch.distributed group (None: when there is
    one), every world-th variant to each (so each gets early and late layers alike); every process gets the
    whole result (see `headscope.distributed`).
    resume: a progress file keeping the per-prompt values of finished variants (saved every `save_every_s`
    seconds); a rerun with the same model, prompts and options skips them. Removed at the end.
    progress: show a progress bar of this process's variants (rank 0's only, under several processes).
    """
    chosen = _check(model, dataset, method, metric)
    if by not in ("head", "layer"):
        raise InputError(f"sweep by {by!r}: use head or layer")
    cfg = model.cfg
    clean_output, resid, replacements = _clean_pass(model, dataset, range(cfg.n_layers), method, seed, True,
                                                    chosen.reads)
    tokens, real = dataset.tokens.to(model.device), dataset.real.to(model.device)
    mask = _mask(dataset, model)
    clean = chosen.of(model, clean_output, tokens, real, clean_output)
    variants = [[(layer, h)] for layer in range(cfg.n_layers) for h in range(cfg.n_heads)] if by == "head" else \
        [[(layer, h) for h in range(cfg.n_heads)] for layer in range(cfg.n_layers)]
    stack = variants_per_pass(cfg, *tokens.shape, chosen.reads, max_memory)

    split = distributed_run.active(distributed)
    processes = distributed_run.world_size() if split else 1
    mine = range(distributed_run.rank() if split else 0, len(variants), processes)
    fingerprint = run_fingerprint(model, dataset, method=method, metric=chosen.name, by=by, seed=seed,
                                  variants=[mine.start, mine.step])
    progress_file = ProgressFile(rank_path(resume, split), fingerprint, save_every_s, keep_finished=split)

    def values_of_mine() -> list[torch.Tensor]:
        """Per-prompt metric values of this process's variants, those of one layer stacked `stack` at a time."""
        saved = progress_file.load()
        done = {} if saved is None else {int(key): value for key, value in saved[0].items()}
        todo = [i for i in mine if i not in done]
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="variant", desc="sweep",
                   disable=not progress or not distributed_run.is_writer())
        for layer in sorted({variants[i][0][0] for i in todo}):
            of_layer = [i for i in todo if variants[i][0][0] == layer]
            for start in range(0, len(of_layer), stack):
                chunk = of_layer[start : start + stack]
                values = _run_variants(model, layer, [variants[i] for i in chunk], resid[layer], tokens, real,
                                       mask, clean_output, chosen, replacements)
                done |= {i: value.cpu() for i, value in zip(chunk, values)}
                progress_file.save(lambda: ({str(i): v for i, v in done.items()}, {}), final=len(done) == len(mine))
                bar.update(len(chunk))
        bar.close()
        return [done[i] for i in mine]

    if split:
        distributed_run.check_same_dataset(dataset)
    per_rank = distributed_run.gather(values_of_mine, split)
    values = [per_rank[i % processes][i // processes] for i in range(len(variants))]
    progress_file.remove()
    effects = tuple(_effect(v, value, clean.cpu(), n_bootstrap, seed) for v, value in zip(variants, values))
    meta = _meta(model, dataset, seed) | {"by": by, "processes": processes}
    return AblationResult(model.name, method, chosen.name, float(clean.mean()), effects, meta)


def _run_variants(model, layer, variants, resid, tokens, real, mask, clean_output, metric, replacements):
    """Several ablated variants of one layer in one pass, stacked along the batch (variant-major)."""
    rows = torch.arange(len(tokens), device=tokens.device)

    def ablating(heads):
        def edit(z):
            for l, h in heads:
                z[:, :, h] = replacements.value(l, h, z, rows)
        return edit

    hook = edit_hook(len(tokens), [ablating(heads) for heads in variants])
    output = run_stacked(model, layer, resid.repeat(len(variants), 1, 1), len(variants),
                         [(f"blocks.{layer}.attn.hook_z", hook)], mask, metric.reads)
    return split_metric(metric, model, output, len(variants), tokens, real, clean_output)
