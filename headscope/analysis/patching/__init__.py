"""Causal experiments on prompt pairs: exact, path and attribution patching, direct logit attribution.

    pairs = read_pairs("ioi.jsonl", model.tokenizer)           # or from_records(ioi_records(tok, 64), tok)
    patch_sweep(model, pairs, "head")                          # every head's output, noising
    patch(model, pairs, [(9, 9)], site="k", denoise=True)      # one head's key input, denoising
    path_patch(model, pairs, [(5, 5)], [(9, 9)], via="q")      # sender -> receiver through its queries
    attribution_sweep(model, pairs, "head", method="atp*")     # every head from one backward pass
Each returns a `PatchResult` (to_json / from_json; `headscope.viz.patching.patching_figure`).
"""

from headscope.analysis.patching.attribution import attribution_sweep
from headscope.analysis.patching.dla import direct_logit_attribution, logit_lens
from headscope.analysis.patching.exact import patch, patch_sweep
from headscope.analysis.patching.generate import GENERATORS, induction_records, ioi_records
from headscope.analysis.patching.pairs import PromptPairs, from_records, pairs_dataset, read_pairs
from headscope.analysis.patching.path import path_patch, path_patch_sweep
from headscope.analysis.patching.result import PatchEffect, PatchResult

__all__ = [
    "GENERATORS", "PatchEffect", "PatchResult", "PromptPairs", "attribution_sweep", "direct_logit_attribution",
    "from_records", "logit_lens",
    "induction_records", "ioi_records", "pairs_dataset", "patch", "patch_sweep", "path_patch", "path_patch_sweep",
    "read_pairs",
]
