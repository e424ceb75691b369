"""Benchmark: attribution patching (AtP, AtP*) against exact activation patching of every head.

Same model, same generated prompt pairs, same metric (the logit difference): the exact head sweep
(`patch_sweep`, stacked along the batch) against `attribution_sweep` with AtP and AtP*. Prints the times,
the speed ratio exact / AtP, and how well the estimates agree with exact patching: Spearman's rank
correlation of the per-head effects (effect = patched metric minus the unpatched run's) and how many of
the exact top-10 heads by |effect| are in AtP's top 10 (top 4 of the toy model's 8). Also prints the heads where AtP is furthest off.

  python scripts/bench_patching.py --model toy-induction-2l --pairs induction --n 32
  python scripts/bench_patching.py --model smollm2-135m --pairs ioi --n 16 --naive

With --naive it also times exact patching the way it is usually run, one hooked forward per head with
whole logits (TransformerLens' `run_with_hooks`), checks its effects equal the stacked sweep's, and prints
both speed ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from headscope.analysis.patching import attribution_sweep, from_records, patch_sweep
from headscope.analysis.patching.generate import GENERATORS
from headscope.heads import head_name
from headscope.loading.load import load_model

from bench_report import report  # scripts/, beside this file


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1])


def deltas(result) -> torch.Tensor:
    return torch.tensor([e.value - result.base for e in result.effects])


@torch.no_grad()
def naive_sweep(model, pairs, denoise: bool) -> torch.Tensor:
    """Exact head patching as it is usually run (TransformerLens' `run_with_hooks`, one full forward per
    head, whole logits): each head's mean logit difference minus the unpatched run's."""
    base, source = (pairs.corrupted, pairs.clean) if denoise else (pairs.clean, pairs.corrupted)
    mask = pairs.clean.attention_mask
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(source.tokens, names_filter=names, attention_mask=mask)
    last = (mask.sum(1) if mask is not None else torch.full((len(pairs),), base.tokens.shape[1])) - 1
    rows = torch.arange(len(pairs))

    def logit_diff(logits):
        return (logits[rows, last, pairs.answers] - logits[rows, last, pairs.wrongs]).mean()

    unpatched = logit_diff(model(base.tokens, attention_mask=mask))
    values = []
    for layer, name in enumerate(names):
        for head in range(model.cfg.n_heads):
            def put(z, hook, head=head):
                z = z.clone()
                z[:, :, head] = cache[hook.name][:, :, head]
                return z
            logits = model.run_with_hooks(base.tokens, fwd_hooks=[(name, put)], attention_mask=mask)
            values.append(float(logit_diff(logits) - unpatched))
    return torch.tensor(values)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-induction-2l")
    parser.add_argument("--pairs", default="induction", choices=sorted(GENERATORS))
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--denoise", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json")
    parser.add_argument("--no-star", action="store_true", help="skip AtP* (its GradDrop is one backward per layer)")
    parser.add_argument("--naive", action="store_true",
                        help="also time one hooked forward per head (how exact patching is usually run)")
    parser.add_argument("--save", help="write the exact, AtP and AtP* results as PREFIX_exact.json, ...")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    pairs = from_records(GENERATORS[args.pairs](model.tokenizer, args.n, args.seed), model.tokenizer)
    attribution_sweep(model, pairs.subset([0]), "head", "atp", n_bootstrap=10)  # warm-up
    exact, t_exact = timed(lambda: patch_sweep(model, pairs, "head", denoise=args.denoise, n_bootstrap=100))
    atp, t_atp = timed(lambda: attribution_sweep(model, pairs, "head", "atp", denoise=args.denoise, n_bootstrap=100))
    star, t_star = (None, float("nan")) if args.no_star else timed(
        lambda: attribution_sweep(model, pairs, "head", "atp*", denoise=args.denoise, n_bootstrap=100))
    truth = deltas(exact)
    naive, t_naive = (None, float("nan")) if not args.naive else timed(lambda: naive_sweep(model, pairs, args.denoise))
    k = min(10, len(truth) // 2)  # the toy model has 8 heads: its top 4
    top = set(truth.abs().topk(k).indices.tolist())
    figures = {"model": args.model, "pairs": f"{args.pairs} x {args.n}", "tokens": pairs.clean.tokens.shape[1],
               "threads": torch.get_num_threads(), "clean": exact.clean, "corrupted": exact.corrupted,
               "exact_s": t_exact, "atp_s": t_atp, "atp_star_s": t_star,
               "exact/atp": t_exact / t_atp, "exact/atp*": t_exact / t_star,
               "naive_s": t_naive, "naive/atp": t_naive / t_atp, "naive/exact": t_naive / t_exact,
               "naive_max_diff": float("nan") if naive is None else float((naive - truth).abs().max())}
    for label, result in (("atp", atp), ("atp*", star)) if star else (("atp", atp),):
        estimate = deltas(result)
        figures[f"{label}_spearman"] = spearman(estimate, truth)
        figures[f"{label}_spearman_abs"] = spearman(estimate.abs(), truth.abs())
        figures[f"{label}_top{k}"] = len(top & set(estimate.abs().topk(k).indices.tolist()))
    names = [head_name(*e.heads[0]) for e in exact.effects]
    off = (deltas(atp) - truth).abs().topk(3).indices.tolist()
    figures["atp_worst"] = ", ".join(f"{names[i]} exact {truth[i]:+.3f} atp {deltas(atp)[i]:+.3f}" for i in off)
    figures["exact_top5"] = ", ".join(f"{names[i]} {truth[i]:+.3f}" for i in truth.abs().topk(5).indices.tolist())
    report(figures, args.json)
    for label, result in (("exact", exact), ("atp", atp), ("atp_star", star)) if args.save else ():
        if result is None:
            continue
        with open(f"{args.save}_{label}.json", "w") as f:
            f.write(result.to_json())


if __name__ == "__main__":
    main()
