"""One entry point for a patching experiment described by options, as the command line describes it.

`run_patching` chooses between named heads (exact patching of them together), a sweep (exact or
attribution), a path (senders -> receivers through q, k, v or the logits; "*" senders: every earlier
head alone), and a held-out selection; and adds the random-head control when asked.
"""

from __future__ import annotations

from dataclasses import replace

from headscope.analysis.ablation import SWEEP_MEMORY
from headscope.analysis.controls import held_out_patching, random_head_control
from headscope.analysis.patching import attribution, exact, path
from headscope.analysis.patching.pairs import PromptPairs
from headscope.analysis.patching.result import PatchResult
from headscope.errors import InputError
from headscope.heads import parse_heads

METHODS = ("exact", "atp", "atp*")


def parse_path(spec: str, n_layers: int, n_heads: int) -> tuple[list | None, list | None]:
    """"L0H1,L0H2:L1H0" -> (senders, receivers); "*:L1H0" -> (None, receivers): every earlier head alone;
    "L9H9:" or "L9H9" -> (senders, None), for the direct path to the logits."""
    senders, _, receivers = spec.partition(":")
    sent = None if senders.strip() == "*" else parse_heads(senders, n_layers, n_heads)
    received = parse_heads(receivers, n_layers, n_heads) if receivers.strip() else None
    return sent, received


def run_patching(model, pairs: PromptPairs, *, heads: str | None = None, sweep: str | None = None,
                 path_spec: str | None = None, via: str | None = None, site: str = "z", method: str = "exact",
                 denoise: bool = False, metric="logit-diff", held_out: int | None = None, control: int = 0,
                 seed: int = 0, max_memory: int = SWEEP_MEMORY, progress: bool = False) -> PatchResult:
    """The experiment the options name (exactly one of heads, sweep, path_spec, held_out), as a PatchResult;
    `control` random draws of as many heads from the same layers with named heads or a held-out selection."""
    chosen = [name for name, value in (("heads", heads), ("sweep", sweep), ("path", path_spec),
                                       ("held_out", held_out)) if value is not None]
    if len(chosen) != 1:
        raise InputError("choose what to patch: named heads, a sweep, a path or a held-out selection (exactly one)")
    if method not in METHODS:
        raise InputError(f"unknown patching method {method!r}: use {', '.join(METHODS)}")
    if method != "exact" and sweep is None:
        raise InputError(f"attribution patching ({method}) estimates a whole sweep: give a sweep")
    if control and heads is None and held_out is None:
        raise InputError("the random-head control compares named heads or a held-out selection with random ones")
    if via is not None and path_spec is None:
        raise InputError("via (q, k, v or logits) is the input of a path's receivers: give a path")
    cfg = model.cfg
    options = dict(metric=metric, denoise=denoise, seed=seed)
    if held_out is not None:
        return held_out_patching(model, pairs, held_out, n_draws=control, **options)
    if sweep is not None:
        if method == "exact":
            return exact.patch_sweep(model, pairs, sweep, max_memory=max_memory, progress=progress, **options)
        return attribution.attribution_sweep(model, pairs, sweep, method, **options)
    if path_spec is not None:
        senders, receivers = parse_path(path_spec, cfg.n_layers, cfg.n_heads)
        via = via or ("logits" if receivers is None else "q")
        if senders is None:
            return path.path_patch_sweep(model, pairs, receivers, via, max_memory=max_memory, progress=progress,
                                         **options)
        return path.path_patch(model, pairs, senders, receivers, via, **options)
    named = parse_heads(heads, cfg.n_layers, cfg.n_heads)
    result = exact.patch(model, pairs, named, site=site, **options)
    if control:
        def measure(draw):
            return exact.patch(model, pairs, draw, site=site, n_bootstrap=1, **options).effects[0].value
        drawn = random_head_control(measure, named, cfg.n_heads, result.base, control, seed)
        result = replace(result, meta={**result.meta, "control": drawn.to_dict()})
    return result
