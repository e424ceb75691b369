"""Controls a reviewer asks for: heads chosen on some prompts and measured on others, and random heads.

- Held out: the prompts (or prompt pairs) are split in two by a seeded shuffle; a single-head sweep on
  the first part picks the `k` heads of largest effect, and they are ablated or patched together on the
  second part only. The result's meta records both parts' indices and the selection.
- Random-head control: `n_draws` sets of as many heads as were chosen, drawn from the same layers (each
  chosen head replaced by a random head of its layer, no head twice), each ablated or patched the same
  way. The real effect's percentile is the share of draws whose |effect| is smaller than the real one's:
  near 100 means few random heads of those layers do as much.
Both work for `ablation.ablate` and `patching.patch`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from headscope.analysis import ablation
from headscope.analysis.metrics import logit_diff_metric
from headscope.analysis.patching import exact
from headscope.analysis.patching.pairs import PromptPairs
from headscope.errors import InputError
from headscope.heads import head_name

Heads = list[tuple[int, int]]


@dataclass(frozen=True)
class RandomControl:
    """The effects (metric minus the unpatched run's) of `n_draws` random head sets, and the real one's
    percentile among their magnitudes."""

    real: float
    draws: tuple[float, ...]
    percentile: float

    def to_dict(self) -> dict:
        return {"control": "random", "n_draws": len(self.draws), "real": self.real, "draws": list(self.draws),
                "percentile": self.percentile}


def random_heads_like(heads: Heads, n_heads: int, n_draws: int, seed: int = 0) -> list[Heads]:
    """`n_draws` head sets with as many heads per layer as `heads`, each different from `heads`."""
    per_layer: dict[int, int] = {}
    for layer, _ in heads:
        per_layer[layer] = per_layer.get(layer, 0) + 1
    if all(count == n_heads for count in per_layer.values()):
        raise InputError("the chosen heads fill their layers: there are no other heads of those layers to draw")
    rng = random.Random(seed)
    chosen, draws = set(heads), []
    while len(draws) < n_draws:
        draw = [(layer, h) for layer, count in sorted(per_layer.items()) for h in rng.sample(range(n_heads), count)]
        if set(draw) != chosen:
            draws.append(draw)
    return draws


def random_head_control(measure: Callable[[Heads], float], heads: Heads, n_heads: int, base: float,
                        n_draws: int = 100, seed: int = 0) -> RandomControl:
    """`measure(heads)` (the metric with those heads ablated or patched) of the real heads and of random ones."""
    if n_draws < 1:
        raise InputError(f"a random-head control needs at least one draw, got {n_draws}")
    real = measure(heads) - base
    draws = tuple(measure(draw) - base for draw in random_heads_like(heads, n_heads, n_draws, seed))
    percentile = 100.0 * sum(abs(d) < abs(real) for d in draws) / len(draws)
    return RandomControl(real, draws, percentile)


def _top(effects, base: float, k: int) -> Heads:
    single = [e for e in effects if len(e.heads) == 1]
    if k < 1 or k > len(single):
        raise InputError(f"choose between 1 and {len(single)} heads, not {k}")
    ranked = sorted(single, key=lambda e: abs(e.value - base), reverse=True)
    return [e.heads[0] for e in ranked[:k]]


def held_out_patching(model, pairs: PromptPairs, k: int = 3, *, metric="logit-diff", denoise: bool = False,
                      fraction: float = 0.5, n_draws: int = 0, seed: int = 0, n_bootstrap: int = 1000):
    """Pick the `k` heads whose patch moves the metric most on one part of the pairs (`fraction` of them),
    patch them together on the other part; with `n_draws`, the random-head control on that part too.
    A `PatchResult` of the evaluation, its meta holding the split, the selection and the control."""
    select, evaluate = pairs.split(fraction, seed)
    sweep = exact.patch_sweep(model, select, "head", metric, denoise=denoise, seed=seed, n_bootstrap=10)
    heads = _top(sweep.effects, sweep.base, k)
    result = exact.patch(model, evaluate, heads, metric=metric, denoise=denoise, seed=seed, n_bootstrap=n_bootstrap)
    meta = {"select": select.meta["subset"], "evaluate": evaluate.meta["subset"],
            "selected_on_select": {head_name(*e.heads[0]): e.value for e in sweep.effects if e.heads[0] in heads}}
    if n_draws:
        def measure(chosen):
            return exact.patch(model, evaluate, chosen, metric=metric, denoise=denoise, n_bootstrap=1).effects[0].value
        meta["control"] = random_head_control(measure, heads, model.cfg.n_heads, result.base, n_draws, seed).to_dict()
    return replace(result, meta={**result.meta, "held_out": meta})


def held_out_ablation(model, dataset, k: int = 3, *, method: str = "zero", metric="loss", fraction: float = 0.5,
                      n_draws: int = 0, seed: int = 0, n_bootstrap: int = 1000, answers=None, wrongs=None):
    """As `held_out_patching`, for ablation: a head sweep on one part of the prompts picks the `k` heads
    whose ablation changes the metric most; they are ablated together on the other part. An
    `AblationResult` whose meta holds the split, the selection and the control. With `answers` and
    `wrongs` (token ids per prompt) the metric is the logit difference, split with the prompts."""
    if len(dataset) < 2:
        raise InputError(f"a held-out evaluation needs at least two prompts, got {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    cut = min(len(dataset) - 1, max(1, round(len(dataset) * fraction)))
    chosen_rows, eval_rows = order[:cut].sort().values, order[cut:].sort().values

    def metric_of(rows):
        return metric if answers is None else logit_diff_metric(answers[rows], wrongs[rows])

    sweep = ablation.sweep(model, dataset.subset(chosen_rows), method, metric_of(chosen_rows), seed=seed, n_bootstrap=10)
    ranked = sorted(sweep.effects, key=lambda e: abs(e.delta), reverse=True)
    if not 1 <= k <= len(ranked):
        raise InputError(f"choose between 1 and {len(ranked)} heads, not {k}")
    heads = [e.heads[0] for e in ranked[:k]]
    evaluate = dataset.subset(eval_rows)
    metric = metric_of(eval_rows)
    result = ablation.ablate(model, evaluate, heads, method, metric, seed=seed, n_bootstrap=n_bootstrap)
    meta = {"select": chosen_rows.tolist(), "evaluate": eval_rows.tolist(),
            "selected_on_select": {head_name(*e.heads[0]): e.delta for e in ranked[:k]}}
    if n_draws:
        def measure(chosen):
            return ablation.ablate(model, evaluate, chosen, method, metric, seed=seed, n_bootstrap=1).effects[0].value
        meta["control"] = random_head_control(measure, heads, model.cfg.n_heads, result.baseline, n_draws, seed).to_dict()
    return replace(result, meta={**result.meta, "held_out": meta})


def ablate_with_control(model, dataset, heads: Heads, *, method: str = "zero", metric="loss", n_draws: int = 100,
                        seed: int = 0, n_bootstrap: int = 1000):
    """`ablation.ablate` of `heads`, its meta holding the random-head control of `n_draws` draws."""
    result = ablation.ablate(model, dataset, heads, method, metric, seed=seed, n_bootstrap=n_bootstrap)

    def measure(chosen):
        return ablation.ablate(model, dataset, chosen, method, metric, seed=seed, n_bootstrap=1).effects[0].value

    control = random_head_control(measure, heads, model.cfg.n_heads, result.baseline, n_draws, seed)
    return replace(result, meta={**result.meta, "control": control.to_dict()})
