"""Direct logit attribution and the logit lens: the cheap first look at prompt pairs.

Direct logit attribution (DLA): a head's output at each pair's last position, `z W_O` (d_model), passed
through the norm on attention's output if the block has one (Gemma, OLMo 2) and the final norm, their
scales frozen at the clean run's values there (centred first for LayerNorm, times the norm's weight;
`detectors.frozen_output_norm`, `frozen_final_norm`) and onto `W_U[:, answer] -
W_U[:, wrong]`: how much of the clean logit difference the head writes directly, in logits. Per layer,
the same for the whole block's output (attention and MLP). Heads' contributions plus the rest (biases,
embeddings) add up to the logit difference when the norm's scale is frozen.

Logit lens: the residual stream entering each layer (and the final one), through the final norm (not
frozen) and the unembedding, read as the logit difference at every position.

References
----------
Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits" (direct logit attribution).
nostalgebraist (2020), "interpreting GPT: the logit lens".
"""

from __future__ import annotations

from dataclasses import replace

import torch

from headscope.analysis.detectors import frozen_final_norm, frozen_output_norm
from headscope.analysis.metrics import last_rows
from headscope.analysis.patching.exact import effect, result_of
from headscope.analysis.patching.pairs import PromptPairs
from headscope.analysis.patching.result import PatchResult
from headscope.analysis.patching.runs import Prepared, cache_names, prepare
from headscope.errors import InputError


def _direction(model, pairs: PromptPairs) -> torch.Tensor:
    """(pairs, d_model): W_U[:, answer] - W_U[:, wrong]."""
    W_U = model.W_U
    return (W_U[:, pairs.answers.to(model.device)] - W_U[:, pairs.wrongs.to(model.device)]).T


def _prepared(model, pairs: PromptPairs, names: list[str]) -> Prepared:
    if not model.cfg.has_unembed:
        raise InputError("direct logit attribution needs an unembedding; this model (an encoder) has none")
    return prepare(model, pairs, "logit-diff", False, names)


@torch.no_grad()
def direct_logit_attribution(model, pairs: PromptPairs, by: str = "head", *, seed: int = 0,
                             n_bootstrap: int = 1000) -> PatchResult:
    """Each head's (by="head") or each layer's (by="layer") direct contribution to the clean run's logit
    difference, in logits ("value"; no "normalized"), method "dla"."""
    if by not in ("head", "layer"):
        raise InputError(f"direct logit attribution by {by!r}: use head or layer")
    cfg = model.cfg
    names = cache_names(model, range(cfg.n_layers), inputs=False)
    names += [f"blocks.{l}.hook_resid_post" for l in range(cfg.n_layers)]
    names += ["ln_final.hook_scale"] if cfg.final_norm else []
    output_norm = cfg.block_norms != "pre"
    names += [f"blocks.{l}.ln1_post.hook_scale" for l in range(cfg.n_layers)] if output_norm else []
    prepared = _prepared(model, pairs, names)
    cache, real = prepared.clean.cache, prepared.real
    scale = last_rows(cache["ln_final.hook_scale"], real) if cfg.final_norm else None
    direction = _direction(model, pairs)

    def contribution(x: torch.Tensor) -> torch.Tensor:  # (pairs, d_model) -> (pairs,)
        return (frozen_final_norm(model, x.float(), scale) * direction).sum(-1)

    effects = []
    for layer in range(cfg.n_layers):
        if by == "layer":
            written = cache[f"blocks.{layer}.hook_resid_post"] - cache[f"blocks.{layer}.hook_resid_pre"]
            values = contribution(last_rows(written, real))
            effects.append(effect(prepared, (), None, values, n_bootstrap, seed, layer=layer))
            continue
        z = last_rows(cache[f"blocks.{layer}.attn.hook_z"], real)  # (pairs, heads, d_head)
        W_O = model.blocks[layer].attn.W_O
        for head in range(cfg.n_heads):
            written = z[:, head] @ W_O[head]
            if output_norm:
                output_scale = last_rows(cache[f"blocks.{layer}.ln1_post.hook_scale"], real)
                written = frozen_output_norm(model, layer, written, output_scale)
            values = contribution(written)
            effects.append(_unnormalized(effect(prepared, [(layer, head)], None, values, n_bootstrap, seed)))
    if by == "layer":
        effects = [_unnormalized(e) for e in effects]
    return result_of(model, pairs, prepared, "head" if by == "head" else "layer", "dla", effects, seed,
                     value="direct contribution to the clean logit difference, in logits")


def _unnormalized(e):
    return replace(e, normalized=None)  # a contribution, not a patched value: 0..1 does not apply


@torch.no_grad()
def logit_lens(model, pairs: PromptPairs, run: str = "clean", *, seed: int = 0, n_bootstrap: int = 200) -> PatchResult:
    """The logit difference read off the residual stream entering each layer (and after the last, as layer
    n_layers) at every position of the clean (or corrupted) run: kind "resid", method "logit-lens"."""
    if run not in ("clean", "corrupted"):
        raise InputError(f"the logit lens reads the clean or the corrupted run, not {run!r}")
    cfg = model.cfg
    names = [f"blocks.{l}.hook_resid_pre" for l in range(cfg.n_layers)]
    names.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    prepared = _prepared(model, pairs, names)
    cache = getattr(prepared, run).cache
    streams = [cache[n] for n in names]
    direction = _direction(model, pairs)  # (pairs, d_model)
    effects = []
    for layer, resid in enumerate(streams):
        hidden = model.ln_final(resid) if cfg.final_norm else resid  # (pairs, pos, d_model)
        diffs = (hidden.float() * direction[:, None]).sum(-1)
        if cfg.unembed_bias:
            b_U = model.unembed.b_U
            diffs = diffs + (b_U[pairs.answers.to(model.device)] - b_U[pairs.wrongs.to(model.device)])[:, None]
        for position in range(resid.shape[1]):
            values = diffs[:, position]
            effects.append(_unnormalized(effect(prepared, (), [position], values, n_bootstrap, seed, layer=layer)))
    return result_of(model, pairs, prepared, "resid", "logit-lens", effects, seed, run=run)
