"""Exact activation patching: splice one run's activations into the other and measure the metric.

What is patched (`site`): a head's output z (`hook_z`), at every position or at chosen ones; a head's
query, key or value input, or its attention pattern (the head's z recomputed with that one input from
the other run, the rest from its own); the residual stream entering a layer at one position.
Noising (default) patches corrupted activations into the clean run; `denoise=True` patches clean
activations into the corrupted run.

`patch_sweep` patches every head (or every head x position, every layer x position) on its own, fast, as
the ablation sweep does (`headscope.analysis.stacking`): each layer's residual stream in is kept from
the base run, each patched variant starts there, and variants are stacked along the batch under a memory
budget; a metric that reads the final hidden states unembeds only the positions it reads. It equals one
`run_with_hooks` pass per patch (tests hold the two together).

References
----------
Meng et al. (2022), "Locating and Editing Factual Associations in GPT" (causal tracing).
Heimersheim & Nanda (2024), "How to use and interpret activation patching" (noising vs denoising).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

import headscope
from headscope.analysis.ablation import SWEEP_MEMORY, bootstrap_mean_interval
from headscope.analysis.metrics import MetricFn
from headscope.analysis.patching.pairs import PromptPairs
from headscope.analysis.patching.result import PatchEffect, PatchResult
from headscope.analysis.patching.runs import Prepared, cache_names, head_z_with, prepare
from headscope.analysis.stacking import edit_hook, run_stacked, split_metric, variants_per_pass
from headscope.errors import InputError
from headscope.heads import head_name

SITES = ("z", "q", "k", "v", "pattern")
SWEEPS = ("head", "head-pos", "resid", "q", "k", "v", "pattern")


def effect(prepared: Prepared, heads, positions, values: torch.Tensor, n_bootstrap: int, seed: int,
           layer: int | None = None) -> PatchEffect:
    """A patch's effect from its per-prompt metric values (pairs,)."""
    values = values.detach().double().cpu()
    clean, corrupted = float(prepared.clean_values.mean()), float(prepared.corrupted_values.mean())
    value = float(values.mean())
    normalized = None if clean == corrupted else (value - corrupted) / (clean - corrupted)
    return PatchEffect(tuple(heads), None if positions is None else tuple(positions), value, normalized,
                       bootstrap_mean_interval(values, n_bootstrap, seed), layer)


def result_of(model, pairs: PromptPairs, prepared: Prepared, kind: str, method: str, effects, seed: int,
              **meta) -> PatchResult:
    """The `PatchResult` of a run's effects, with its provenance."""
    info = {"denoise": prepared.denoise, "pairs": pairs.name, "pairs_meta": pairs.meta, "n_pairs": len(pairs),
            "n_pos": pairs.clean.tokens.shape[1], "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
            "seed": seed, "headscope_version": headscope.__version__} | meta
    return PatchResult(getattr(model, "source", ""), kind, method, prepared.metric.name,
                       float(prepared.clean_values.mean()), float(prepared.corrupted_values.mean()),
                       tuple(effects), info)


def _check_heads(model, heads) -> None:
    bad = [(l, h) for l, h in heads if not (0 <= l < model.cfg.n_layers and 0 <= h < model.cfg.n_heads)]
    if bad:
        raise InputError(f"head {head_name(*bad[0])} does not exist: the model has {model.cfg.n_layers} layers x "
                         f"{model.cfg.n_heads} heads")


def _replacement(model, prepared: Prepared, layer: int, head: int, site: str) -> torch.Tensor:
    """What the head's z becomes when its `site` is patched: (pairs, pos, d_head)."""
    if site == "z":
        return prepared.source.z(layer)[:, :, head]
    return head_z_with(model, prepared, layer, head, site, prepared.source)


def _splice(z: torch.Tensor, head: int, value: torch.Tensor, positions) -> None:
    if positions is None:
        z[:, :, head] = value
    else:
        z[:, list(positions), head] = value[:, list(positions)]


@torch.no_grad()
def patch(model, pairs: PromptPairs, heads: list[tuple[int, int]], *, site: str = "z",
          positions: list[int] | None = None, metric: str | MetricFn = "logit-diff", denoise: bool = False,
          seed: int = 0, n_bootstrap: int = 1000) -> PatchResult:
    """The metric with `heads` patched together: their z (at `positions` if given), or one input of each
    (site q, k, v) or their attention pattern. One result, kind "head" (or "head-pos" with positions)."""
    if site not in SITES:
        raise InputError(f"unknown patching site {site!r}: use {', '.join(SITES)}")
    if not heads:
        raise InputError("no heads to patch")
    _check_heads(model, heads)
    n_pos = pairs.clean.tokens.shape[1]
    if positions is not None:
        if site != "z":
            raise InputError(f"patching at chosen positions is for head outputs (z), not {site}")
        bad = [p for p in positions if not 0 <= p < n_pos]
        if bad:
            raise InputError(f"position {bad[0]} is out of range for prompts of {n_pos} tokens")
    layers = sorted({l for l, _ in heads})
    prepared = prepare(model, pairs, metric, denoise, cache_names(model, layers, inputs=site != "z"))

    def editing(layer):
        values = {h: _replacement(model, prepared, layer, h, site) for l, h in heads if l == layer}
        return edit_hook(len(pairs), [lambda z: [_splice(z, h, v, positions) for h, v in values.items()]])

    hooks = [(f"blocks.{l}.attn.hook_z", editing(l)) for l in layers]
    output = run_stacked(model, layers[0], prepared.base.resid(layers[0]), 1, hooks, prepared.mask,
                         prepared.metric.reads)
    kind = "head" if positions is None else "head-pos"
    one = effect(prepared, heads, positions, prepared.measure(model, output), n_bootstrap, seed)
    return result_of(model, pairs, prepared, kind if site == "z" else site, "exact", [one], seed)


def _sweep_variants(cfg, kind: str, n_pos: int) -> list[tuple[int, int | None, int | None]]:
    """(layer, head or None, position or None) of every patch a sweep makes, layer by layer."""
    heads = range(cfg.n_heads)
    if kind == "resid":
        return [(l, None, p) for l in range(cfg.n_layers) for p in range(n_pos)]
    if kind == "head-pos":
        return [(l, h, p) for l in range(cfg.n_layers) for h in heads for p in range(n_pos)]
    return [(l, h, None) for l in range(cfg.n_layers) for h in heads]


@torch.no_grad()
def patch_sweep(model, pairs: PromptPairs, kind: str = "head", metric: str | MetricFn = "logit-diff", *,
                denoise: bool = False, seed: int = 0, n_bootstrap: int = 1000, max_memory: int = SWEEP_MEMORY,
                progress: bool = False) -> PatchResult:
    """Every single patch of one kind: "head" (each head's z), "head-pos" (each head's z at each
    position), "resid" (the residual stream into each layer at each position), or "q" / "k" / "v" /
    "pattern" (that input of each head). Effects in layer, head, position order."""
    if kind not in SWEEPS:
        raise InputError(f"unknown patching sweep {kind!r}: use {', '.join(SWEEPS)}")
    site = {"head": "z", "head-pos": "z", "resid": "resid"}.get(kind, kind)
    cfg = model.cfg
    prepared = prepare(model, pairs, metric, denoise, cache_names(model, range(cfg.n_layers), site not in ("z", "resid")))
    n, n_pos = pairs.clean.tokens.shape
    variants = _sweep_variants(cfg, kind, n_pos)
    stack = variants_per_pass(cfg, n, n_pos, prepared.metric.reads, max_memory)
    bar = tqdm(total=len(variants), unit="patch", desc="patch", disable=not progress)
    values = []
    for layer in range(cfg.n_layers):
        of_layer = [v for v in variants if v[0] == layer]
        replacements = {} if site == "resid" else {h: _replacement(model, prepared, layer, h, site)
                                                   for h in range(cfg.n_heads)}
        for start in range(0, len(of_layer), stack):
            chunk = of_layer[start : start + stack]
            values += _run_chunk(model, prepared, layer, chunk, replacements)
            bar.update(len(chunk))
    bar.close()
    effects = [effect(prepared, () if h is None else [(l, h)], None if p is None else [p], value, n_bootstrap, seed,
                      layer=l if h is None else None) for (l, h, p), value in zip(variants, values)]
    return result_of(model, pairs, prepared, kind, "exact", effects, seed)


def _run_chunk(model, prepared: Prepared, layer: int, chunk, replacements: dict) -> list[torch.Tensor]:
    """Per-prompt metric values of a chunk of one layer's patches, stacked in one pass."""
    base, n, k = prepared.base, len(prepared.base.tokens), len(chunk)
    stacked = base.resid(layer).repeat(k, 1, 1)
    hooks = []
    if not replacements:  # the residual stream at one position per variant
        source = prepared.source.resid(layer)
        for index, (_, _, position) in enumerate(chunk):
            stacked[index * n : (index + 1) * n, position] = source[:, position]
    else:
        edits = [lambda z, h=h, p=p: _splice(z, h, replacements[h], None if p is None else [p]) for _, h, p in chunk]
        hooks = [(f"blocks.{layer}.attn.hook_z", edit_hook(n, edits))]
    output = run_stacked(model, layer, stacked, k, hooks, prepared.mask, prepared.metric.reads)
    return split_metric(prepared.metric, model, output, k, base.tokens, prepared.real, prepared.clean.output)
