"""The attention half of copy suppression on every SmolLM2-135M head, with its OV copying score.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python experiments/head_roles/copy_suppression.py

For natural text (experiments/head_roles/sentences.txt packed into 64-token windows) and for 16 prompts of
repeated random tokens, every layer's attention from each query to earlier copies of the logit-lens top-1
token at that layer's input (`copy_suppression_masses`, pooled over prompts), ungated: the 8 highest heads
with their OV copying score (the `copy_suppression` role also asks <= -0.9 of it).
"""

import time

from headscope import load_model
from headscope.analysis.copy_suppression import copy_suppression_masses
from headscope.analysis.ov_scores import ov_copying_scores
from headscope.capture.datasets import dataset_for_model
from headscope.heads import head_name

model = load_model("smollm2-135m")
ov = ov_copying_scores(model)
for spec, mode in (("experiments/head_roles/sentences.txt", "pack"), ("repeated-random", "pad")):
    data = dataset_for_model(model, spec, seq_len=64, num_prompts=16, mode=mode)
    began = time.perf_counter()
    masses = copy_suppression_masses(model, data, range(model.cfg.n_layers))
    pooled = masses.nan_to_num(0).sum(0) / (~masses.isnan()).sum(0).clamp(min=1)
    print(spec, mode, tuple(data.tokens.shape), f"{time.perf_counter() - began:.1f}s")
    for index in pooled.flatten().argsort(descending=True)[:8].tolist():
        layer, head = divmod(index, model.cfg.n_heads)
        print(f"  {head_name(layer, head)} attention {pooled[layer, head]:.3f} ov_copying {ov[layer, head]:+.3f}")
