"""SmolLM2-135M on generated IOI pairs: which heads carry the indirect object, and what feeds them.

Steps (each result is written beside this script as JSON, the transcript to stdout):
1. 8 IOI pairs (`headscope pairs ioi smollm2-135m --n 8 --seed 0`), noising (corrupted S2 patched into clean).
2. The exact head sweep (kept if `smollm2_noise_heads.json` exists: it is the one `scripts/bench_patching.py
   --model smollm2-135m --pairs ioi --n 8 --save` writes) and each head's direct path to the logits.
3. The top heads' attention from the last position to the indirect object (IO), the first and the second
   subject mention (S1, S2), averaged over pairs.
4. Head x position: AtP for every head at every position, and exact patching of the top heads at every
   position beside it.
5. Path patching into the three top heads whose direct effect is largest (name-mover candidates): every
   earlier head as a sender through their queries, keys and values.

  cd experiments/patching && python smollm2_ioi.py [--via q,k,v]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from headscope import load_model
from headscope.analysis.patching import attribution_sweep, from_records, patch_sweep
from headscope.analysis.patching.exact import patch
from headscope.analysis.patching.experiment import run_patching
from headscope.analysis.patching.generate import GENERATORS
from headscope.analysis.patching.result import PatchResult
from headscope.heads import head_name
from headscope.io import write_text_atomically

TOP = 10


def delta_by_head(result: PatchResult) -> dict[tuple[int, int], float]:
    return {tuple(e.heads[0]): e.value - result.base for e in result.effects}


def timed(label, fn):
    start = time.perf_counter()
    out = fn()
    print(f"[{label}: {time.perf_counter() - start:.1f} s]", flush=True)
    return out


def save(result: PatchResult, name: str) -> PatchResult:
    write_text_atomically(name, result.to_json())
    return result


def name_attention(model, pairs, heads) -> dict:
    """Mean attention from each pair's last real position to IO, S1 and S2, per head."""
    tokens = pairs.clean.tokens
    layers = sorted({l for l, _ in heads})
    names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names, attention_mask=pairs.clean.attention_mask)
    mask = pairs.clean.attention_mask
    last = (mask.sum(1) if mask is not None else torch.full((len(tokens),), tokens.shape[1])) - 1
    out = {}
    for l, h in heads:
        rows = {"IO": [], "S1": [], "S2": []}
        for i, (answer, wrong) in enumerate(zip(pairs.answers.tolist(), pairs.wrongs.tolist())):
            row = cache[f"blocks.{l}.attn.hook_pattern"][i, h, last[i]]
            io = (tokens[i] == answer).nonzero().flatten().tolist()
            s = (tokens[i] == wrong).nonzero().flatten().tolist()
            rows["IO"].append(float(row[io].sum()))
            rows["S1"].append(float(row[s[0]]))
            rows["S2"].append(float(row[s[-1]]) if len(s) > 1 else float("nan"))
        out[head_name(l, h)] = {k: sum(v) / len(v) for k, v in rows.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--via", default="q,k,v")
    args = parser.parse_args()
    model = load_model("smollm2-135m").eval()
    records = GENERATORS["ioi"](model.tokenizer, 8, 0)
    write_text_atomically("smollm2_ioi_pairs.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    pairs = from_records(records, model.tokenizer)
    if os.path.exists("smollm2_noise_heads.json"):
        heads = PatchResult.from_json(open("smollm2_noise_heads.json").read())
    else:
        heads = save(timed("exact head sweep", lambda: patch_sweep(model, pairs, "head")), "smollm2_noise_heads.json")
    print(f"clean logit difference {heads.clean:.3f}, corrupted {heads.corrupted:.3f}")
    total = delta_by_head(heads)
    direct = delta_by_head(save(timed("direct paths", lambda: run_patching(model, pairs, path_spec="*", via="logits")),
                                "smollm2_direct_path.json"))
    top = sorted(total, key=lambda k: total[k])[:TOP]
    attention = name_attention(model, pairs, top)
    write_text_atomically("smollm2_top_heads.json", json.dumps(
        [{"heads": [head_name(*k)], "total": total[k], "direct": direct[k], **attention[head_name(*k)]} for k in top],
        indent=2))
    print(f"{'head':<8}{'total':>8}{'direct':>8}{'->IO':>7}{'->S1':>7}{'->S2':>7}")
    for k in top:
        a = attention[head_name(*k)]
        print(f"{head_name(*k):<8}{total[k]:>+8.3f}{direct[k]:>+8.3f}{a['IO']:>7.2f}{a['S1']:>7.2f}{a['S2']:>7.2f}")

    atp = save(timed("AtP head x position", lambda: attribution_sweep(model, pairs, "head-pos")),
               "smollm2_atp_head_pos.json")
    atp_by = {(tuple(e.heads[0]), e.positions[0]): e.value - atp.base for e in atp.effects}
    rows = []
    for k in top:
        for p in range(pairs.clean.tokens.shape[1]):
            value = patch(model, pairs, [k], positions=[p], n_bootstrap=200).effects[0].value - heads.base
            rows.append({"heads": [head_name(*k)], "positions": [p], "exact": value, "atp": atp_by[(k, p)]})
    write_text_atomically("smollm2_exact_head_pos_top.json", json.dumps(rows, indent=2))
    print("largest exact head x position effects among the top heads:")
    for r in sorted(rows, key=lambda r: r["exact"])[:12]:
        print(f"  {r['heads'][0]} pos {r['positions'][0]:>2}: exact {r['exact']:+.3f}  AtP {r['atp']:+.3f}")

    movers = sorted(top, key=lambda k: direct[k])[:3]
    receivers = ",".join(head_name(*k) for k in movers)
    print(f"receivers (largest direct effect among the top heads): {receivers}")
    for via in args.via.split(","):
        result = save(timed(f"path *:{receivers} via {via}",
                            lambda: run_patching(model, pairs, path_spec=f"*:{receivers}", via=via)),
                      f"smollm2_path_{via}.json")
        senders = sorted(result.effects, key=lambda e: e.value)[:5]
        print(f"  via {via}: " + ", ".join(f"{head_name(*e.heads[0])} {e.value - result.base:+.3f}" for e in senders))


if __name__ == "__main__":
    main()
