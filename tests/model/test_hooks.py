"""Hook points carry TransformerLens names, caches hold what the filter names, hooks never leak."""

import pytest
import torch

from headscope.errors import HookError
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS

PER_LAYER_HOOKS = [
    "hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern",
    "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_mlp_out", "hook_resid_post",
]


@pytest.fixture
def llama():
    torch.manual_seed(0)
    return HookedTransformer(TINY_CONFIGS["llama-gqa"]).eval()


def test_transformer_lens_hook_names(llama):
    names = set(llama.hook_names())
    assert {"hook_embed", "ln_final.hook_normalized"} <= names
    for layer in range(2):
        for hook in PER_LAYER_HOOKS:
            assert f"blocks.{layer}.{hook}" in names
        assert f"blocks.{layer}.attn.hook_rot_q" in names


@torch.no_grad()
def test_activation_shapes_with_grouped_query_attention(llama):
    tokens = torch.randint(0, 99, (2, 6))
    _, cache = llama.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.attn."))
    assert cache["blocks.0.attn.hook_q"].shape == (2, 6, 4, 8)
    assert cache["blocks.0.attn.hook_k"].shape == (2, 6, 2, 8)  # key/value heads
    assert cache["blocks.0.attn.hook_v"].shape == (2, 6, 2, 8)
    assert cache["blocks.0.attn.hook_pattern"].shape == (2, 4, 6, 6)  # query heads
    assert cache["blocks.0.attn.hook_z"].shape == (2, 6, 4, 8)
    assert cache["blocks.0.attn.hook_result"].shape == (2, 6, 4, 32)


@torch.no_grad()
def test_cache_holds_only_what_the_filter_names(llama):
    tokens = torch.randint(0, 99, (1, 5))
    _, by_name = llama.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert list(by_name) == ["blocks.1.hook_resid_post"]
    _, by_list = llama.run_with_cache(tokens, names_filter=["hook_embed", "blocks.0.attn.hook_z"])
    assert set(by_list) == {"hook_embed", "blocks.0.attn.hook_z"}
    _, by_predicate = llama.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert set(by_predicate) == {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}
    _, everything = llama.run_with_cache(tokens)
    assert set(everything) == set(llama.hook_names())


def test_unknown_hook_name_is_a_clear_error(llama):
    with pytest.raises(HookError, match="unknown hook name 'blocks.9.attn.hook_pattern'"):
        llama.run_with_cache(torch.zeros(1, 3, dtype=torch.long), names_filter="blocks.9.attn.hook_pattern")


@torch.no_grad()
def test_hooks_are_removed_after_an_exception(llama):
    def broken(tensor, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        llama.run_with_hooks(torch.zeros(1, 3, dtype=torch.long), fwd_hooks=[(lambda n: "attn" in n, broken)])
    assert not any(hook.active for hook in llama.hook_dict.values())
    llama(torch.zeros(1, 3, dtype=torch.long))  # runs cleanly afterwards


@torch.no_grad()
def test_no_op_hooks_change_nothing(llama):
    tokens = torch.randint(0, 99, (2, 8))
    clean = llama(tokens)
    hooked = llama.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, lambda t, hook: None)])
    torch.testing.assert_close(clean, hooked, atol=1e-6, rtol=0)
    identity = llama.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, lambda t, hook: t)])
    torch.testing.assert_close(clean, identity, atol=1e-6, rtol=0)


@torch.no_grad()
def test_a_hook_can_replace_an_activation(llama):
    tokens = torch.randint(0, 99, (1, 8))

    def zero_head_1(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    clean, clean_cache = llama.run_with_cache(tokens, names_filter="blocks.1.hook_attn_out")
    _, ablated_cache = llama.run_with_cache(tokens, names_filter=["blocks.1.hook_attn_out", "blocks.1.attn.hook_result"])
    result = ablated_cache["blocks.1.attn.hook_result"]
    torch.testing.assert_close(result.sum(2), clean_cache["blocks.1.hook_attn_out"], atol=1e-6, rtol=0)
    with llama.hooks([("blocks.1.attn.hook_z", zero_head_1)]):
        _, cache = llama.run_with_cache(tokens, names_filter="blocks.1.hook_attn_out")
    expected = clean_cache["blocks.1.hook_attn_out"] - result[:, :, 1]
    torch.testing.assert_close(cache["blocks.1.hook_attn_out"], expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_fused_path_is_used_when_nothing_needs_the_pattern(llama):
    seen = []
    tokens = torch.randint(0, 99, (1, 4))
    llama.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z",
                                             lambda t, hook: seen.append(llama.blocks[0].attn.needs_pattern()))])
    llama.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern",
                                             lambda t, hook: seen.append(llama.blocks[0].attn.needs_pattern()))])
    assert seen == [False, True]
