"""Hook parity with TransformerLens' TransformerBridge on the same weights."""

import pytest
import torch
import transformers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers

from headscope.loading.load import load_model
from headscope.loading.transformer_lens import boot_bridge
from headscope.model.tokenizer import Tokenizer

# Hooks both sides have, with the same meaning and shape, compared value for value on tiny models.
SHARED_PER_LAYER = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
                    "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
                    "hook_resid_post", "ln1.hook_normalized", "ln2.hook_normalized", "mlp.hook_post"]


def tiny_tokenizer() -> Tokenizer:
    backend = RustTokenizer(models.WordLevel({f"w{i}": i for i in range(99)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return Tokenizer(backend, bos_token_id=1, eos_token_id=2, pad_token_id=3)


def tiny_hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_head=4, n_layer=2, n_positions=64)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64, num_hidden_layers=2, rope_theta=500.0,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def compare_caches(ours, bridge, names, atol):
    for name in names:
        assert ours[name].shape == bridge[name].shape, name
        torch.testing.assert_close(ours[name], bridge[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("kind", ["gpt2", "llama-gqa"])
@torch.no_grad()
def test_every_shared_hook_equals_the_bridge(kind):
    hf_model = tiny_hf_model(kind)
    bridge = boot_bridge(hf_model, tiny_tokenizer(), name=f"tiny-{kind}")
    ours = load_model(bridge).eval()
    assert ours.source == f"transformer_lens:tiny-{kind}"
    tokens = torch.randint(0, 99, (2, 11), generator=torch.Generator().manual_seed(1))
    names = [f"blocks.{layer}.{hook}" for layer in range(2) for hook in SHARED_PER_LAYER]
    names += ["hook_embed", "ln_final.hook_normalized"]
    if kind == "gpt2":
        names.append("hook_pos_embed")
    else:
        names += [f"blocks.{layer}.attn.{hook}" for layer in range(2) for hook in ("hook_rot_q", "hook_rot_k")]
    assert set(names) <= set(bridge.hook_dict) and set(names) <= set(ours.hook_names())
    bridge_logits, bridge_cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    our_logits, our_cache = ours.run_with_cache(tokens, names_filter=names)
    compare_caches(our_cache, bridge_cache, [n for n in names if not n.endswith("hook_attn_scores")], atol=1e-5)
    # Masked scores: the bridge writes -inf above the diagonal, we the dtype's minimum; compare the rest.
    for layer in range(2):
        name = f"blocks.{layer}.attn.hook_attn_scores"
        visible = torch.ones(11, 11, dtype=torch.bool).tril()
        torch.testing.assert_close(our_cache[name][..., visible], bridge_cache[name][..., visible], atol=1e-5, rtol=0)
    torch.testing.assert_close(our_logits, bridge_logits, atol=1e-5, rtol=0)
    assert bridge.cfg.rotary_base == (500.0 if kind == "llama-gqa" else bridge.cfg.rotary_base)


@pytest.mark.real_model
@torch.no_grad()
def test_smollm2_patterns_equal_the_bridge(smollm2, hf_smollm2, hf_smollm2_tokenizer):
    bridge = boot_bridge(hf_smollm2, hf_smollm2_tokenizer, name="SmolLM2-135M-Instruct")
    tokens = smollm2.to_tokens("The quick brown fox jumps over the lazy dog. The quick brown fox")
    assert torch.equal(tokens, bridge.to_tokens("The quick brown fox jumps over the lazy dog. The quick brown fox"))
    is_pattern = lambda name: name.endswith("attn.hook_pattern")  # noqa: E731
    _, bridge_cache = bridge.run_with_cache(tokens, names_filter=is_pattern)
    _, our_cache = smollm2.run_with_cache(tokens, names_filter=is_pattern)
    assert len(our_cache) == 30 and set(our_cache) <= set(bridge_cache)
    worst = max((our_cache[n] - bridge_cache[n]).abs().max().item() for n in our_cache)
    assert worst <= 1e-5, worst


# Issue 19's families that TransformerLens 4.3 boots a bridge for (it has no adapter for Gemma3ForCausalLM
# or Olmo2ForCausalLM); the tiny models have windows, soft-capping and QK-norm active.
@pytest.mark.parametrize("case", ["gemma2", "mistral", "phi3", "qwen2", "qwen3"])
@torch.no_grad()
def test_issue_19_families_come_in_through_the_bridge(case):
    from tests.loading.test_hf_families import _build

    bridge = boot_bridge(_build(case), tiny_tokenizer(), name=f"tiny-{case}")
    ours = load_model(bridge).eval()
    assert ours.cfg.architecture == case
    tokens = torch.randint(3, 99, (2, 16), generator=torch.Generator().manual_seed(1))
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(3)]
    bridge_logits, bridge_cache = bridge.run_with_cache(tokens, names_filter=lambda n: n in names)
    our_logits, our_cache = ours.run_with_cache(tokens, names_filter=names)
    compare_caches(our_cache, bridge_cache, names, atol=1e-5)
    torch.testing.assert_close(our_logits, bridge_logits, atol=1e-5, rtol=0)
