"""SmolLM2-135M: each Gu sink's output norm relative to its layer's mean head output (the dormant test).

    python experiments/head_roles/sinks_relative_norms.py

Same prompts as `headscope classify smollm2-135m --num-prompts 8` (8 repeated-random prompts, BOS + 64
tokens, seed 0); prints how many heads are Gu sinks (first-token mass > 0.3) and the ten quietest of them.
"""

import time

import torch

import headscope
from headscope.analysis.sink_roles import DORMANT_RELATIVE_NORM, GU_THRESHOLD, head_terms
from headscope.capture.datasets import dataset_for_model

start = time.time()
model = headscope.load_model("smollm2-135m")
dataset = dataset_for_model(model, "repeated-random", seq_len=64, num_prompts=8, seed=0)
mass = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
relative = torch.zeros_like(mass)
for rows, layer, pattern, norms, outputs in head_terms(model, dataset):  # nothing is padded here
    mass[layer] += pattern[..., 0].mean(-1).sum(0)  # Gu's alpha: every query, row 0 included
    mean_output = outputs.mean(-1)  # (prompts, heads)
    relative[layer] += (mean_output / mean_output.mean(1, keepdim=True)).sum(0)
mass, relative = mass / len(dataset), relative / len(dataset)
sinks = mass > GU_THRESHOLD
print(f"{time.time() - start:.0f} s; {int(sinks.sum())} Gu sinks; their relative output norm: min "
      f"{relative[sinks].min():.3f}, median {relative[sinks].median():.3f} (dormant below {DORMANT_RELATIVE_NORM})")
quiet = sorted((float(relative[l, h]), l, h) for l, h in sinks.nonzero().tolist())[:10]
for value, layer, head in quiet:
    print(f"{headscope.heads.head_name(layer, head)}  relative output norm {value:.3f}  mass {mass[layer, head]:.3f}")
