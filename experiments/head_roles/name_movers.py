"""Name-mover scores (Wang et al. 2022) of every SmolLM2-135M head on 16 generated IOI prompts.

    PYTHONPATH=$PWD python experiments/head_roles/name_movers.py > experiments/head_roles/name_movers.txt

Prints each of the 10 highest-scoring heads' score, mean attention from the final position to the IO name,
and copy rate (IO token in the head's OV top-5 logits); then the same for the heads activation patching
found (experiments/patching/smollm2_top_heads.json on main).
"""

import time

import headscope
from headscope.analysis.circuit_roles import NAME_MOVER_THRESHOLD, io_attention, io_copy_hits, ioi_prompts
from headscope.heads import head_name, parse_head

PATCHING_HEADS = ["L23H3", "L20H0", "L17H4", "L29H1", "L23H7"]

start = time.perf_counter()
model = headscope.load_model("smollm2-135m")
prompts = ioi_prompts(model, 16, seed=0)
attention = io_attention(model, prompts)  # (prompts, layers, heads)
hits = io_copy_hits(model, [p.io_id for p in prompts]).double()
scores = (attention * hits).mean(0)  # = name_mover_scores(model, prompts)
print(f"seconds (load + score): {time.perf_counter() - start:.1f}; prompts: {len(prompts)}; "
      f"threshold {NAME_MOVER_THRESHOLD}; heads at or above it: "
      f"{int((scores >= NAME_MOVER_THRESHOLD).sum())}")
n_heads = model.cfg.n_heads
order = scores.flatten().argsort(descending=True)[:10].tolist()
rows = [head_name(i // n_heads, i % n_heads) for i in order]
print("| head | name-mover score | attention to IO | copy rate (IO in OV top-5) | patching top-5 |")
print("|---|---|---|---|---|")
for name in rows + [h for h in PATCHING_HEADS if h not in rows]:
    layer, head = parse_head(name)
    print(f"| {name} | {scores[layer, head]:.3f} | {attention[:, layer, head].mean():.3f} | "
          f"{hits[:, layer, head].mean():.2f} | {'yes' if name in PATCHING_HEADS else ''} |")
