"""Attribution patching: every head's patching effect at once, from two forwards and one backward.

AtP (Nanda 2023) approximates the effect of patching an activation a from the source run into the base
run by the first-order term `(a_source - a_base) . dM/da`, the gradient taken on the base run. One base
forward with gradients, one source forward (already done for the baselines) and one backward give it
for every head's output z (summed over positions and d_head, or per position) and for every head's
query, key and value input.

AtP* (Kramar et al. 2024) fixes the two ways AtP fails:
- attention saturation: a query or key patch is not linearised through the softmax; the head's pattern
  is recomputed with the patched query (key) and only the pattern change is linearised,
  `(A_patched - A_base) . dM/dA`;
- cancellation (GradDrop): a head whose effects through different later layers cancel gets a small
  AtP estimate however much it matters. For each layer l the backward pass is repeated with the gradient
  through layer l's blocks (its attention and MLP outputs) dropped, and the estimate is
  `sum_l |AtP_l| / (L - 1)`, per pair. It is a magnitude; the effects here carry the sign of plain AtP's
  mean over pairs.
AtP* costs L extra backward passes for head outputs and one pattern recomputation per head for q and k.

Effects are reported as the metric's estimated value with the patch (base value + estimate), so they read
like exact patching's; an AtP estimate of a KL divergence at the clean run is 0 (the gradient of a
divergence at its minimum), so choose a logit difference or probability for attribution.

References
----------
Nanda (2023), "Attribution Patching: Activation Patching At Industrial Scale".
Kramar, Lieberum, Shah & Nanda (2024), "AtP*: An efficient and scalable method for localizing LLM
behaviour to components", arXiv:2403.00745.
"""

from __future__ import annotations

import torch

from headscope.analysis.metrics import MetricFn
from headscope.analysis.patching.exact import effect, result_of
from headscope.analysis.patching.pairs import PromptPairs
from headscope.analysis.patching.result import PatchResult
from headscope.analysis.patching.runs import Prepared, attend, cache_names, prepare
from headscope.errors import InputError

METHODS = ("atp", "atp*")
KINDS = ("head", "head-pos", "q", "k", "v")


class _GradGate(torch.autograd.Function):
    """Identity forward; backward passes the gradient unless `state["drop"]` names this layer."""

    @staticmethod
    def forward(ctx, x, layer, state):
        ctx.layer, ctx.state = layer, state
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return (torch.zeros_like(grad) if ctx.state.get("drop") == ctx.layer else grad), None, None


def _forward_with_grads(model, prepared: Prepared, names: list[str], gated: bool):
    """The base run with gradients: the kept activations by name, the summed metric, and the gate state."""
    kept, state = {}, {}

    def leaf(x, hook):  # the residual stream into layer 0 as the leaf every gradient flows back to
        return x.detach().requires_grad_()

    def keep(x, hook):
        kept[hook.name] = x
        return x

    def gate(x, hook):
        return _GradGate.apply(x, int(hook.name.split(".")[1]), state)

    hooks = [("blocks.0.hook_resid_pre", leaf)] + [(name, keep) for name in names]
    if gated:
        hooks += [(n, gate) for n in model.hook_names() if n.endswith(("hook_attn_out", "hook_mlp_out"))]
    base = prepared.base
    with torch.enable_grad(), model.hooks(hooks):
        output = model(base.tokens, attention_mask=prepared.mask, return_type=prepared.metric.reads)
        total = prepared.measure(model, output).sum()  # prompts are independent: each gets its own gradient
    return kept, total, state


def _z_estimates(prepared: Prepared, kept: dict, grads, n_layers: int, by_position: bool) -> torch.Tensor:
    """(prompts, layers, heads[, pos]) first-order effects of patching each head's z."""
    out = []
    for layer, grad in zip(range(n_layers), grads):
        change = prepared.source.z(layer) - prepared.base.z(layer)  # (prompts, pos, heads, d_head)
        per = (change * grad).sum(-1)  # (prompts, pos, heads)
        out.append(per.transpose(1, 2) if by_position else per.sum(1))
    return torch.stack(out, 1)


def _input_estimates(model, prepared: Prepared, kept: dict, grads: dict, which: str, star: bool) -> torch.Tensor:
    """(prompts, layers, heads) effects of patching each head's q, k or v input."""
    cfg, base, source = model.cfg, prepared.base, prepared.source
    out = torch.zeros(len(base.tokens), cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        pattern = kept[f"blocks.{layer}.attn.hook_pattern"].detach()  # (prompts, heads, q, k)
        g_pattern = grads[f"blocks.{layer}.attn.hook_pattern"]
        g_z = grads[f"blocks.{layer}.attn.hook_z"]  # (prompts, pos, heads, d_head)
        for head in range(cfg.n_heads):
            q, k, v = (base.head_input(model, layer, head, name) for name in "qkv")
            new = source.head_input(model, layer, head, which)
            A, gA = pattern[:, head].float(), g_pattern[:, head].float()
            if which == "v":
                g_v = torch.einsum("bqk,bqd->bkd", A, g_z[:, :, head].float())
                out[:, layer, head] = ((new - v) * g_v).sum((1, 2))
            elif star:
                q2, k2 = (new, k) if which == "q" else (q, new)
                patched = attend(model, layer, head, q2, k2, v, prepared.real)[1].float()
                out[:, layer, head] = ((patched - A) * gA).sum((1, 2))
            else:
                old = q if which == "q" else k
                out[:, layer, head] = ((new - old) * _pattern_grad(model, layer, head, q, k, v, prepared.real, gA,
                                                                   which)).sum((1, 2))
    return out


def _pattern_grad(model, layer: int, head: int, q, k, v, real, g_pattern: torch.Tensor, which: str) -> torch.Tensor:
    """d metric / d q (or k) through the head's pattern alone, by autograd through `attend`, so capping,
    windows and sink logits enter the linearisation exactly as they enter the forward pass."""
    q, k = q.detach().requires_grad_(which == "q"), k.detach().requires_grad_(which == "k")
    with torch.enable_grad():
        pattern = attend(model, layer, head, q, k, v.detach(), real)[1]
        return torch.autograd.grad((pattern.float() * g_pattern).sum(), q if which == "q" else k)[0]


def attribution_sweep(model, pairs: PromptPairs, kind: str = "head", method: str = "atp",
                      metric: str | MetricFn = "logit-diff", *, denoise: bool = False, seed: int = 0,
                      n_bootstrap: int = 1000) -> PatchResult:
    """Estimated effects of patching every head's z ("head", or per position "head-pos") or every head's
    q, k or v input, by AtP or AtP* (`method`), as a `PatchResult` like `patch_sweep`'s."""
    if method not in METHODS:
        raise InputError(f"unknown attribution method {method!r}: use {', '.join(METHODS)}")
    if kind not in KINDS:
        raise InputError(f"attribution patching sweeps {', '.join(KINDS)}, not {kind!r}")
    cfg = model.cfg
    inputs = kind in ("q", "k", "v")
    prepared = prepare(model, pairs, metric, denoise, cache_names(model, range(cfg.n_layers), inputs))
    names = [f"blocks.{l}.attn.hook_z" for l in range(cfg.n_layers)]
    names += [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)] if inputs else []
    star = method == "atp*"
    kept, total, state = _forward_with_grads(model, prepared, names, gated=star and not inputs)
    grads = torch.autograd.grad(total, [kept[n] for n in names], retain_graph=star and not inputs)
    if inputs:
        estimates = _input_estimates(model, prepared, kept, dict(zip(names, grads)), kind, star)
    else:
        estimates = _z_estimates(prepared, kept, grads, cfg.n_layers, kind == "head-pos")
        if star:
            # the sign of the mean AtP estimate over pairs, on every pair's GradDrop magnitude
            estimates = estimates.mean(0, keepdim=True).sign() * _grad_drop(prepared, kept, total, state, names, cfg.n_layers,
                                                      kind == "head-pos")
    base = prepared.base_values.detach().cpu()
    estimates = estimates.detach().cpu()
    effects = []
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            if kind == "head-pos":
                effects += [effect(prepared, [(layer, head)], [p], base + estimates[:, layer, head, p], n_bootstrap,
                                   seed) for p in range(estimates.shape[-1])]
            else:
                effects.append(effect(prepared, [(layer, head)], None, base + estimates[:, layer, head], n_bootstrap,
                                      seed))
    return result_of(model, pairs, prepared, kind, method, effects, seed)


def _grad_drop(prepared, kept, total, state, names, n_layers: int, by_position: bool) -> torch.Tensor:
    """GradDrop's magnitude: sum over layers l of |AtP with the gradient through layer l dropped| / (L - 1)."""
    magnitude = 0
    for layer in range(n_layers):
        state["drop"] = layer
        grads = torch.autograd.grad(total, [kept[n] for n in names], retain_graph=layer < n_layers - 1)
        magnitude = magnitude + _z_estimates(prepared, kept, grads, n_layers, by_position).abs()
    state.pop("drop")
    return magnitude / max(1, n_layers - 1)
