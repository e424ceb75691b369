"""Path patching (Wang et al. 2022): the effect of sender heads on receivers through one route only.

Noising (default): the clean run, with the senders' output z taken from the corrupted run and every other
head frozen at its clean z (MLPs recomputed), gives the receivers' new input; in a last, normal clean
pass from the first receiver on, only the chosen input (q, k or v) of each receiver head is taken from
that hybrid run, and the metric is read at the end. `via="logits"` is the direct path: the
senders' change of output added to the final residual stream, then the final norm and unembedding.
`denoise=True` swaps the roles of the two runs. Receivers must come after every sender (a later layer).

`path_patch_sweep` takes every head before the receivers as a lone sender, stacked along the batch like
the exact sweeps.

References
----------
Wang et al. (2022), "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2
small", appendix on path patching.
Goldowsky-Dill et al. (2023), "Localizing Model Behavior with Path Patching".
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from headscope.analysis.ablation import SWEEP_MEMORY
from headscope.analysis.metrics import MetricFn
from headscope.analysis.patching.exact import _check_heads, effect, result_of
from headscope.analysis.patching.pairs import PromptPairs
from headscope.analysis.patching.result import PatchResult
from headscope.analysis.patching.runs import INPUTS, Prepared, _input_names, attend, cache_names, prepare
from headscope.analysis.stacking import edit_hook, run_stacked, split_metric, variants_per_pass
from headscope.errors import InputError
from headscope.heads import head_name

VIA = ("q", "k", "v", "logits")
Heads = list[tuple[int, int]]


def _check_path(model, senders: Heads, receivers: Heads | None, via: str) -> None:
    if via not in VIA:
        raise InputError(f"unknown path input {via!r}: use {', '.join(VIA)}")
    if not senders:
        raise InputError("a path needs sender heads")
    _check_heads(model, senders)
    if via == "logits":
        if receivers:
            raise InputError("the direct path to the logits has no receiver heads")
        return
    if not receivers:
        raise InputError(f"a path through {via} needs receiver heads")
    _check_heads(model, receivers)
    sender = max(senders)
    receiver = min(receivers)
    if receiver[0] <= sender[0]:
        raise InputError(f"path {head_name(*sender)} -> {head_name(*receiver)}: the receiver (layer {receiver[0]}) "
                         f"must come after the sender (layer {sender[0]})")


def _frozen_senders(prepared: Prepared, layer: int, senders_of_variants: list[Heads]):
    """A hook freezing every head of `layer` at the base run's z, senders at the source run's."""
    base, source = prepared.base.z(layer), prepared.source.z(layer)

    def freeze(senders):
        def edit(z):
            z[:] = base
            for l, h in senders:
                if l == layer:
                    z[:, :, h] = source[:, :, h]
        return edit

    return edit_hook(len(base), [freeze(s) for s in senders_of_variants])


def _receivers_hooks(model, prepared: Prepared, receivers: Heads, via: str, hybrid: dict, k: int) -> list:
    """Hooks for the last pass: each receiver layer's live q, k, v are kept, and each receiver's z is
    recomputed from them with its `via` input taken from the hybrid run (per query head, so a grouped
    key/value head is patched for that head alone)."""
    live, hooks = {}, []
    real = prepared.real.repeat(k, 1)
    for layer in sorted({l for l, _ in receivers}):
        names = _input_names(model, layer)
        hooks += [(name, lambda act, hook: live.__setitem__(hook.name, act)) for name in names.values()]

        def splice(z, hook, layer=layer, names=names):
            z = z.clone()
            group = model.blocks[layer].attn.group_size
            for l, h in receivers:
                if l == layer:
                    inputs = {n: live[names[n]][:, :, h if n == "q" else h // group] for n in INPUTS}
                    inputs[via] = hybrid[names[via]][:, :, h if via == "q" else h // group]
                    z[:, :, h] = attend(model, layer, h, inputs["q"], inputs["k"], inputs["v"], real)[0]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", splice))
    return hooks


def _path_values(model, prepared: Prepared, variants: list[Heads], receivers: Heads | None, via: str) -> list[torch.Tensor]:
    """Per-prompt metric values of several sender sets through the same path, stacked in one pass each."""
    k = len(variants)
    start = min(l for senders in variants for l, _ in senders)
    if via == "logits":
        return _direct_values(model, prepared, variants)
    # Every head up to the last receiver's layer is frozen, so a later receiver does not see the sender
    # through an earlier receiver or any other head.
    last_receiver = max(l for l, _ in receivers)
    freezes = [(f"blocks.{l}.attn.hook_z", _frozen_senders(prepared, l, variants)) for l in range(start, last_receiver)]
    captured = {}
    names = {_input_names(model, l)[via] for l, _ in receivers}
    capture = [(name, lambda act, hook: captured.__setitem__(hook.name, act)) for name in names]
    run_stacked(model, start, prepared.base.resid(start).repeat(k, 1, 1), k, freezes + capture, prepared.mask, None)
    first = min(l for l, _ in receivers)
    output = run_stacked(model, first, prepared.base.resid(first).repeat(k, 1, 1), k,
                         _receivers_hooks(model, prepared, receivers, via, captured, k), prepared.mask,
                         prepared.metric.reads)
    return split_metric(prepared.metric, model, output, k, prepared.base.tokens, prepared.real, prepared.clean.output)


def _direct_values(model, prepared: Prepared, variants: list[Heads]) -> list[torch.Tensor]:
    """The direct path: each sender set's change of output added to the base run's final residual stream."""
    last = model.cfg.n_layers - 1
    final = prepared.base.cache[f"blocks.{last}.hook_resid_post"]
    raws: dict[int, torch.Tensor] = {}  # each sender layer's summed head output on the base run, made once

    def raw(layer: int) -> torch.Tensor:
        if layer not in raws:
            attn = model.blocks[layer].attn
            out = prepared.base.z(layer).flatten(2) @ attn.W_O.flatten(0, 1)
            raws[layer] = out + attn.b_O if model.cfg.attn_out_bias else out
        return raws[layer]

    values = []
    for senders in variants:
        resid = final.clone()
        for layer in sorted({l for l, _ in senders}):
            W_O = model.blocks[layer].attn.W_O
            change = sum((prepared.source.z(layer)[:, :, h] - prepared.base.z(layer)[:, :, h]) @ W_O[h]
                         for l, h in senders if l == layer)
            resid = resid + model.blocks[layer].attention_write_change(raw(layer), change)
        hidden = model.ln_final(resid) if model.cfg.final_norm else resid
        output = hidden if prepared.metric.reads == "hidden" else model.unembed_hidden(hidden)
        values.append(prepared.measure(model, output))
    return values


def _names(model) -> list[str]:
    return cache_names(model, range(model.cfg.n_layers)) + [f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]


@torch.no_grad()
def path_patch(model, pairs: PromptPairs, senders: Heads, receivers: Heads | None, via: str = "q", *,
               metric: str | MetricFn = "logit-diff", denoise: bool = False, seed: int = 0,
               n_bootstrap: int = 1000) -> PatchResult:
    """The metric when `senders` reach `receivers` only through their `via` input (or the logits directly,
    via="logits", receivers None): one result of kind "path", receivers and via in its meta."""
    _check_path(model, senders, receivers, via)
    prepared = prepare(model, pairs, metric, denoise, _names(model))
    values, = _path_values(model, prepared, [list(senders)], receivers, via)
    one = effect(prepared, senders, None, values, n_bootstrap, seed)
    return result_of(model, pairs, prepared, "path", "exact", [one], seed, via=via,
                     receivers=[head_name(l, h) for l, h in receivers or []])


@torch.no_grad()
def path_patch_sweep(model, pairs: PromptPairs, receivers: Heads | None, via: str = "q", *,
                     metric: str | MetricFn = "logit-diff", denoise: bool = False, seed: int = 0,
                     n_bootstrap: int = 1000, max_memory: int = SWEEP_MEMORY, progress: bool = False) -> PatchResult:
    """Every head before the receivers (every head, for via="logits") as a lone sender."""
    last = model.cfg.n_layers if via == "logits" or not receivers else min(l for l, _ in receivers)
    if last == 0:
        raise InputError("the receivers are in layer 0: no head comes before them")
    senders = [(l, h) for l in range(last) for h in range(model.cfg.n_heads)]
    _check_path(model, senders, receivers, via)
    prepared = prepare(model, pairs, metric, denoise, _names(model))
    n, n_pos = pairs.clean.tokens.shape
    stack = variants_per_pass(model.cfg, n, n_pos, prepared.metric.reads, max_memory)
    values = []
    for layer in tqdm(range(last), unit="layer", desc="path", disable=not progress):
        of_layer = [[s] for s in senders if s[0] == layer]
        for start in range(0, len(of_layer), stack):
            values += _path_values(model, prepared, of_layer[start : start + stack], receivers, via)
    effects = [effect(prepared, [s], None, v, n_bootstrap, seed) for s, v in zip(senders, values)]
    return result_of(model, pairs, prepared, "path", "exact", effects, seed, via=via,
                     receivers=[head_name(l, h) for l, h in receivers or []])
