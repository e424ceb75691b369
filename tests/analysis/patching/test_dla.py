"""Direct logit attribution adds up to the logit difference; the logit lens ends at the model's output."""

import pytest
import torch

from headscope.analysis.detectors import frozen_final_norm
from headscope.analysis.patching.dla import direct_logit_attribution, logit_lens
from tests.analysis.patching.conftest import logit_diff, make_pairs, tiny


@torch.no_grad()
def test_head_contributions_plus_embeddings_are_the_logit_difference_without_norms():
    model, pairs = tiny("attn-only", seed=9), make_pairs(seed=9)
    dla = direct_logit_attribution(model, pairs, "head", n_bootstrap=10)
    assert dla.method == "dla" and len(dla.effects) == 8 and dla.effects[0].normalized is None
    _, cache = model.run_with_cache(pairs.clean.tokens, names_filter=["blocks.0.hook_resid_pre"],
                                    attention_mask=pairs.clean.attention_mask)
    last = pairs.clean.attention_mask.sum(1) - 1
    embed = cache["blocks.0.hook_resid_pre"][torch.arange(4), last]
    direction = (model.W_U[:, pairs.answers] - model.W_U[:, pairs.wrongs]).T
    total = sum(e.value for e in dla.effects) + float((embed * direction).sum(-1).mean())
    assert total == pytest.approx(dla.clean, abs=1e-4)


@torch.no_grad()
def test_layer_contributions_add_up_with_the_frozen_final_norm():
    model, pairs = tiny("gpt2", seed=10), make_pairs(seed=10)
    dla = direct_logit_attribution(model, pairs, "layer", n_bootstrap=10)
    assert [e.layer for e in dla.effects] == [0, 1]
    names = ["blocks.0.hook_resid_pre", "ln_final.hook_scale"]
    _, cache = model.run_with_cache(pairs.clean.tokens, names_filter=names, attention_mask=pairs.clean.attention_mask)
    rows, last = torch.arange(4), pairs.clean.attention_mask.sum(1) - 1
    direction = (model.W_U[:, pairs.answers] - model.W_U[:, pairs.wrongs]).T
    embed = frozen_final_norm(model, cache["blocks.0.hook_resid_pre"][rows, last], cache["ln_final.hook_scale"][rows, last])
    rest = (embed * direction).sum(-1) + direction @ model.ln_final.b
    assert sum(e.value for e in dla.effects) + float(rest.mean()) == pytest.approx(dla.clean, abs=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_logit_lens_of_the_last_stream_is_the_model_output(arch):
    model, pairs = tiny(arch, seed=11), make_pairs(seed=11, padded=False)
    lens = logit_lens(model, pairs, n_bootstrap=10)
    assert len(lens.effects) == 3 * 7  # two layers' inputs and the final stream, every position
    final_last = [e for e in lens.effects if e.layer == 2 and e.positions == (6,)][0]
    expected = logit_diff(model(pairs.clean.tokens), pairs).mean()
    assert final_last.value == pytest.approx(float(expected), abs=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["gemma", "olmo2"])
def test_heads_through_the_norm_on_attention_output_add_up_to_the_layers_write(arch):
    """With the norm on attention's output frozen at its scale, the heads' contributions of a layer add up to
    what the layer's attention writes into the stream (hook_attn_out, read through the frozen final norm)."""
    model, pairs = tiny(arch, seed=11), make_pairs(seed=11)
    dla = direct_logit_attribution(model, pairs, "head", n_bootstrap=10)
    names = [f"blocks.{l}.hook_attn_out" for l in range(2)] + ["ln_final.hook_scale"]
    _, cache = model.run_with_cache(pairs.clean.tokens, names_filter=names, attention_mask=pairs.clean.attention_mask)
    rows, last = torch.arange(4), pairs.clean.attention_mask.sum(1) - 1
    direction = (model.W_U[:, pairs.answers] - model.W_U[:, pairs.wrongs]).T
    for layer in range(2):
        written = frozen_final_norm(model, cache[names[layer]][rows, last], cache["ln_final.hook_scale"][rows, last])
        expected = float((written * direction).sum(-1).mean())
        heads = sum(e.value for e in dla.effects if e.heads[0][0] == layer)
        assert heads == pytest.approx(expected, abs=1e-4) and abs(expected) > 1e-3
