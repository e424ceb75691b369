"""SmolLM2-135M on generated IOI pairs: from the exact head sweep (scripts/bench_patching.py --save), path
patching into the heads that matter most, their direct logit attribution, and what they attend to.

  python scripts/bench_patching.py --model smollm2-135m --pairs ioi --n 8 --save experiments/patching/smollm2_ioi_heads
  python experiments/patching/smollm2_ioi.py     # reads smollm2_ioi_heads_exact.json, writes smollm2_ioi_paths.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from headscope.analysis.patching import PatchResult, direct_logit_attribution, from_records, ioi_records, path_patch
from headscope.heads import head_name
from headscope.loading.load import load_model

HERE = Path(__file__).parent


def main() -> None:
    model = load_model("smollm2-135m").eval()
    pairs = from_records(ioi_records(model.tokenizer, 8, 0), model.tokenizer)  # the bench's pairs (seed 0)
    sweep = PatchResult.from_json((HERE / "smollm2_ioi_heads_exact.json").read_text())
    ranked = sorted(sweep.effects, key=lambda e: e.value - sweep.base)  # most harmful corrupted patch first
    top = [e.heads[0] for e in ranked[:6]]
    print("clean", round(sweep.clean, 3), "corrupted", round(sweep.corrupted, 3))
    print("top heads (noising):", ", ".join(f"{head_name(*h)} {e.normalized:+.3f}" for h, e in zip(top, ranked)))
    dla = direct_logit_attribution(model, pairs, n_bootstrap=200)
    by_head = {e.heads[0]: e.value for e in dla.effects}
    print("direct logit attribution of the top heads:", ", ".join(f"{head_name(*h)} {by_head[h]:+.3f}" for h in top))
    out = {"top": [head_name(*h) for h in top], "dla": {head_name(*h): by_head[h] for h in top},
           "dla_top": [(head_name(*e.heads[0]), e.value) for e in sorted(dla.effects, key=lambda e: -abs(e.value))[:8]]}
    latest = max(l for l, _ in top)
    receivers = [h for h in top if h[0] == latest] or top[-1:]
    senders = [h for h in top if h[0] < latest]
    rows = []
    for sender in senders:
        for via in ("q", "k", "v"):
            r = path_patch(model, pairs, [sender], receivers, via, n_bootstrap=200).effects[0]
            rows.append((head_name(*sender), via, r.value, r.normalized))
            print(f"path {head_name(*sender)} -> {','.join(head_name(*h) for h in receivers)} via {via}: "
                  f"{r.value:+.3f} (normalised {r.normalized:+.3f})")
    for head in top:
        r = path_patch(model, pairs, [head], None, "logits", n_bootstrap=200).effects[0]
        rows.append((head_name(*head), "logits", r.value, r.normalized))
        print(f"path {head_name(*head)} -> logits: {r.value:+.3f} (normalised {r.normalized:+.3f})")
    out["receivers"] = [head_name(*h) for h in receivers]
    out["paths"] = rows
    out["attention"] = attention_to_names(model, pairs, top)
    print("attention at the last position to IO / S1 / S2:", out["attention"])
    (HERE / "smollm2_ioi_paths.json").write_text(json.dumps(out, indent=2))


@torch.no_grad()
def attention_to_names(model, pairs, heads) -> dict:
    """Each head's mean attention from the last position to the indirect object and the two subject names."""
    tokens, mask = pairs.clean.tokens, pairs.clean.attention_mask
    names = [f"blocks.{l}.attn.hook_pattern" for l in sorted({l for l, _ in heads})]
    _, cache = model.run_with_cache(tokens, names_filter=names, attention_mask=mask)
    last = (mask.sum(1) - 1) if mask is not None else torch.full((len(tokens),), tokens.shape[1] - 1)
    out = {}
    for layer, head in heads:
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, head]
        io, s1, s2 = [], [], []
        for b in range(len(tokens)):
            row = pattern[b, last[b]]
            io_pos = (tokens[b] == pairs.answers[b]).nonzero().flatten()
            s_pos = (tokens[b] == pairs.wrongs[b]).nonzero().flatten()
            io.append(float(row[io_pos].sum()))
            s1.append(float(row[s_pos[0]]))
            s2.append(float(row[s_pos[-1]]))
        out[head_name(layer, head)] = [round(sum(x) / len(x), 3) for x in (io, s1, s2)]
    return out


if __name__ == "__main__":
    main()
