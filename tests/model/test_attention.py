"""The explicit and fused attention paths agree; GQA equals plain attention with repeated K/V."""

import dataclasses

import pytest
import torch

from headscope.loading import LoadedModel
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS


def run_both_paths(model, tokens, **kwargs):
    model.set_attention_path(explicit=True)
    explicit = model(tokens, return_type="hidden", **kwargs)
    model.set_attention_path(explicit=False)
    fused = model(tokens, return_type="hidden", **kwargs)
    return explicit, fused


@torch.no_grad()
def test_explicit_and_fused_paths_agree(tiny_model):
    tokens = torch.randint(0, 99, (3, 17))
    explicit, fused = run_both_paths(tiny_model, tokens)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=0)


@torch.no_grad()
def test_paths_agree_with_padding_mask(tiny_model):
    tokens = torch.randint(0, 99, (3, 12))
    mask = torch.ones_like(tokens)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    explicit, fused = run_both_paths(tiny_model, tokens, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(explicit[real], fused[real], atol=1e-5, rtol=0)


@torch.no_grad()
def test_pattern_rows_are_distributions(tiny_model):
    tokens = torch.randint(0, 99, (2, 9))
    mask = torch.ones_like(tokens)
    mask[1, 6:] = 0
    _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_pattern", "hook_sink")),
                                         attention_mask=mask)
    for name, pattern in cache.items():
        if name.endswith("hook_sink"):
            continue
        assert pattern.shape == (2, 4, 9, 9)
        sink = cache.get(name.replace("hook_pattern", "hook_sink"), torch.zeros(2, 4, 9))
        assert (sink > 0).all() == tiny_model.cfg.attn_sinks  # a sink takes mass from every row
        torch.testing.assert_close(pattern.sum(-1) + sink, torch.ones(2, 4, 9))
        assert (pattern[1, :, :, 6:] < 1e-6).all(), "padding keys must get no attention"
        if tiny_model.cfg.causal:
            assert pattern.triu(diagonal=1).abs().max() == 0


@torch.no_grad()
def test_grouped_query_attention_equals_repeated_key_value_heads():
    torch.manual_seed(1)
    gqa_cfg = TINY_CONFIGS["llama-gqa"]
    gqa = HookedTransformer(gqa_cfg).eval()
    mha_cfg = dataclasses.replace(gqa_cfg, n_kv_heads=None)
    state = dict(gqa.state_dict())
    group = gqa_cfg.n_heads // gqa_cfg.kv_heads
    for name in list(state):
        if name.endswith(("attn.W_K", "attn.W_V")):
            state[name] = state[name].repeat_interleave(group, dim=0)
    mha = HookedTransformer.from_loaded(LoadedModel(mha_cfg, state))
    tokens = torch.randint(0, 99, (2, 15))
    for explicit in (True, False):
        gqa.set_attention_path(explicit)
        mha.set_attention_path(explicit)
        torch.testing.assert_close(gqa(tokens), mha(tokens), atol=1e-6, rtol=0)


@torch.no_grad()
def test_partial_rotary_leaves_unrotated_dims_alone():
    torch.manual_seed(2)
    model = HookedTransformer(TINY_CONFIGS["neox"]).eval()
    tokens = torch.randint(0, 99, (1, 7))
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_q", "blocks.0.attn.hook_rot_q"])
    q, rot_q = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_rot_q"]
    rotary_dims = TINY_CONFIGS["neox"].rotary_dims
    torch.testing.assert_close(q[..., rotary_dims:], rot_q[..., rotary_dims:])
    torch.testing.assert_close(q[:, 0], rot_q[:, 0])  # position 0 is rotated by angle 0
    assert not torch.allclose(q[:, 1:, :, :rotary_dims], rot_q[:, 1:, :, :rotary_dims])


@pytest.mark.parametrize("dtype", [torch.bfloat16])
@torch.no_grad()
def test_half_precision_paths_agree(dtype):
    torch.manual_seed(3)
    model = HookedTransformer(TINY_CONFIGS["llama-gqa"]).to(dtype).eval()
    tokens = torch.randint(0, 99, (2, 11))
    explicit, fused = run_both_paths(model, tokens)
    assert explicit.dtype == dtype
    torch.testing.assert_close(explicit.float(), fused.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_a_row_with_every_key_masked_is_finite_in_half_precision(dtype):
    """Left padding: query 0 of row 0 sees only key 0, a padding key. With scores below -16, float16's
    minimum plus the score used to overflow to -inf, and a row of -inf gave NaN."""
    from headscope.model.attention import Attention, attention_bias

    attn = Attention(TINY_CONFIGS["gpt2"])
    q = torch.full((2, 5, 4, 8), 3.0, dtype=dtype)
    k, v = -q, torch.randn(2, 5, 4, 8).to(dtype)  # every score -25.5
    key_mask = torch.ones(2, 5)
    key_mask[0, :2] = 0
    bias = attention_bias(5, 5, True, key_mask, dtype, q.device)
    assert bias.dtype == dtype and bias.min() == torch.finfo(dtype).min
    for z in (attn.explicit(q, k, v, bias), attn.fused(q, k, v, bias)):
        assert torch.isfinite(z).all()
        torch.testing.assert_close(z[1], attn.explicit(q[1:], k[1:], v[1:], None)[0])  # unpadded row unchanged


@torch.no_grad()
def test_local_window_hides_keys_beyond_it():
    """The gemma config's layer 0 has a window of 4: a query sees itself and the 3 keys before it."""
    torch.manual_seed(4)
    model = HookedTransformer(TINY_CONFIGS["gemma"]).eval()
    _, cache = model.run_with_cache(torch.randint(0, 99, (1, 12)), names_filter=lambda n: n.endswith("hook_pattern"))
    distance = torch.arange(12)[:, None] - torch.arange(12)[None, :]
    local, global_ = cache["blocks.0.attn.hook_pattern"][0], cache["blocks.1.attn.hook_pattern"][0]
    assert local[:, distance >= 4].abs().max() == 0
    assert (local[:, (distance >= 0) & (distance < 4)] > 0).all()
    assert (global_[:, distance >= 4] > 0).all()


@torch.no_grad()
def test_soft_capping_bounds_the_scores():
    torch.manual_seed(5)
    model = HookedTransformer(TINY_CONFIGS["gemma"]).eval()
    with torch.no_grad():
        model.blocks[1].attn.W_Q.mul_(50)  # scores far beyond the cap of 0.5
    _, cache = model.run_with_cache(torch.randint(0, 99, (1, 9)), names_filter="blocks.1.attn.hook_attn_scores")
    scores = cache["blocks.1.attn.hook_attn_scores"][0]
    visible = scores[:, torch.ones(9, 9, dtype=torch.bool).tril()]
    assert visible.abs().max() <= 0.5 and visible.abs().max() > 0.45


@torch.no_grad()
def test_sinks_match_transformers_gpt_oss_attention():
    """Our explicit and fused paths against transformers' own GPT-OSS eager attention on the same q, k, v."""
    from types import SimpleNamespace

    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    torch.manual_seed(6)
    model = HookedTransformer(TINY_CONFIGS["sinks"]).eval()
    attn = model.blocks[1].attn  # the global layer
    attn.sinks.normal_(std=1.0)
    x = torch.randn(2, 10, 32)
    q, k, v = attn.project_qkv(x, attn.rotary.cos_sin(10, x.device))
    causal = torch.zeros(10, 10).masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), float("-inf"))
    module = SimpleNamespace(sinks=attn.sinks, num_key_value_groups=attn.group_size, training=False)
    ref_z, ref_pattern = eager_attention_forward(module, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 causal[None, None], attn.cfg.scale)
    seen = {}
    with model.hooks([("blocks.1.attn.hook_pattern", lambda t, hook: seen.update(pattern=t)),
                      ("blocks.1.attn.hook_sink", lambda t, hook: seen.update(sink=t))]):
        explicit = attn.explicit(q, k, v, None)
    torch.testing.assert_close(seen["pattern"], ref_pattern, atol=1e-6, rtol=0)
    torch.testing.assert_close(seen["sink"], 1 - ref_pattern.sum(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(explicit, ref_z, atol=1e-6, rtol=0)
    torch.testing.assert_close(attn.fused(q, k, v, None), ref_z, atol=1e-6, rtol=0)


@torch.no_grad()
def test_pattern_rows_from_q_and_k_equal_the_explicit_paths_pattern(tiny_model):
    tokens = torch.randint(0, 99, (3, 12))
    mask = torch.ones_like(tokens)
    mask[1, 8:] = 0
    rot = "rot_" if tiny_model.cfg.positional == "rotary" else ""
    norm = tiny_model.cfg.qk_norm != "none" and not rot
    q_name, k_name = ("attn.q_norm.hook_normalized", "attn.k_norm.hook_normalized") if norm else \
        (f"attn.hook_{rot}q", f"attn.hook_{rot}k")
    _, cache = tiny_model.run_with_cache(tokens, attention_mask=mask)
    for layer, block in enumerate(tiny_model.blocks):
        q, k = cache[f"blocks.{layer}.{q_name}"], cache[f"blocks.{layer}.{k_name}"]
        rows = torch.arange(5, 9)  # a few query rows, against every key
        made = block.attn.pattern_rows(q[:, 5:9], k, rows, mask)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, 5:9]
        real = mask.bool()[:, None, 5:9, None].expand_as(pattern)  # padded query rows are nobody's concern
        torch.testing.assert_close(made[real], pattern[real], atol=1e-6, rtol=0)
