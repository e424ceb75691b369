"""SmolLM2-135M: each Gu sink's output norm relative to its layer's mean head output (the dormant test).

    python experiments/head_roles/sinks_relative_norms.py

Same prompts as `headscope classify smollm2-135m --num-prompts 8` (8 repeated-random prompts, BOS + 64
tokens, seed 0); prints how many heads are Gu sinks (first-token mass > 0.3) and the ten quietest of them.
"""

import time

import headscope
from headscope.analysis.sink_roles import DORMANT_RELATIVE_NORM, GU_THRESHOLD, sink_scores
from headscope.capture.datasets import dataset_for_model

start = time.time()
model = headscope.load_model("smollm2-135m")
dataset = dataset_for_model(model, "repeated-random", seq_len=64, num_prompts=8, seed=0)
scores = sink_scores(model, dataset)  # per prompt; nothing is padded here
mass = scores["first_token_mass"].mean(0)  # Gu's alpha: every query, row 0 included
relative = scores["relative_output_norm"].mean(0)  # mean output norm over the layer's mean head's
sinks = mass > GU_THRESHOLD
print(f"{time.time() - start:.0f} s; {int(sinks.sum())} Gu sinks; their relative output norm: min "
      f"{relative[sinks].min():.3f}, median {relative[sinks].median():.3f} (dormant below {DORMANT_RELATIVE_NORM})")
quiet = sorted((float(relative[l, h]), l, h) for l, h in sinks.nonzero().tolist())[:10]
for value, layer, head in quiet:
    print(f"{headscope.heads.head_name(layer, head)}  relative output norm {value:.3f}  mass {mass[layer, head]:.3f}")
