"""`attend` rebuilds one head's attention from its q, k, v exactly as the model's forward pass does."""

import pytest
import torch

from headscope.analysis.patching.runs import _input_names, attend
from tests.analysis.patching.conftest import make_pairs, tiny
from tests.conftest import TINY_CONFIGS


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_attend_equals_the_models_pattern_and_z(arch):
    """Windows, soft-capping, sink logits, QK-norm, GQA and padding: every head of every layer."""
    model, pairs = tiny(arch, seed=2), make_pairs(seed=2)
    mask = pairs.clean.attention_mask
    layers = range(model.cfg.n_layers)
    inputs = [name for layer in layers for name in _input_names(model, layer).values()]
    outputs = [f"blocks.{l}.attn.hook_{n}" for l in layers for n in ("pattern", "z")]
    model.set_attention_path(explicit=True)
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(pairs.clean.tokens, names_filter=inputs + outputs, attention_mask=mask)
    finally:
        model.set_attention_path(explicit=False)
    real = mask.bool()
    group = model.cfg.n_heads // model.cfg.kv_heads
    for layer in layers:
        names = _input_names(model, layer)
        for head in range(model.cfg.n_heads):
            q = cache[names["q"]][:, :, head]
            k, v = (cache[names[n]][:, :, head // group] for n in "kv")
            z, pattern = attend(model, layer, head, q, k, v, real)
            expected = cache[f"blocks.{layer}.attn.hook_pattern"][:, head]
            rows = real[:, :, None].expand_as(pattern)  # a padding query's row is not attention anyone uses
            assert torch.allclose(pattern[rows], expected[rows], atol=1e-6), (layer, head)
            assert torch.allclose(z[real], cache[f"blocks.{layer}.attn.hook_z"][:, :, head][real], atol=1e-5)
