"""Issue 19's families against `transformers` itself: tiny seeded models (three layers, GQA, windows of 4
keys on 16-token prompts so the window matters, soft-capping that bites) give the same logits and every
layer's attention pattern as transformers' eager attention, and fused capture equals explicit capture.
"""

from __future__ import annotations

import pytest
import torch
import transformers

import headscope
from headscope.capture.datasets import from_tensor
from headscope.errors import UnsupportedModelError
from headscope.loading.hf import load_hf_folder, load_hf_model
from headscope.model.transformer import HookedTransformer
from tests.capture.test_engine import assert_same_result

VOCAB, N_POS, WINDOW = 99, 16, 4
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              intermediate_size=64, num_hidden_layers=3, max_position_embeddings=64, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]

CASES = {
    "qwen2": lambda: (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
        **COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, rope_theta=500.0)),
    "qwen3": lambda: (transformers.Qwen3ForCausalLM, transformers.Qwen3Config(
        **COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, attention_bias=True)),
    "gemma2": lambda: (transformers.Gemma2ForCausalLM, transformers.Gemma2Config(
        **COMMON, query_pre_attn_scalar=16, sliding_window=WINDOW, layer_types=LAYER_TYPES,
        attn_logit_softcapping=0.8, final_logit_softcapping=0.1)),
    "gemma3_text": lambda: (transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig(
        **COMMON, query_pre_attn_scalar=16, sliding_window=WINDOW, layer_types=LAYER_TYPES,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})),
    "olmo2": lambda: (transformers.Olmo2ForCausalLM, transformers.Olmo2Config(**COMMON)),
    "phi3": lambda: (transformers.Phi3ForCausalLM, transformers.Phi3Config(**COMMON, sliding_window=WINDOW)),
    "mistral": lambda: (transformers.MistralForCausalLM, transformers.MistralConfig(
        **COMMON, sliding_window=WINDOW)),
}


def _build(case: str) -> transformers.PreTrainedModel:
    """Seeded, eager attention, non-trivial norm weights and biases, and Q/K scaled up so that scores
    are of order one (soft-capping and windows then change the patterns visibly)."""
    torch.manual_seed(0)
    cls, config = CASES[case]()
    config._attn_implementation = "eager"
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
            elif any(key in name for key in ("q_proj", "k_proj", "qkv_proj")):
                param.mul_(8.0)
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request, tmp_path_factory):
    model = _build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    ours = HookedTransformer.from_loaded(load_hf_folder(folder)).eval()
    return request.param, model, ours


def _tokens(n_prompts: int = 3) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n_prompts, N_POS), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_logits_and_patterns_match_transformers(built):
    case, hf_model, ours = built
    tokens = _tokens()
    ref = hf_model(tokens, output_attentions=True)
    logits, cache = ours.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert (ref.logits - logits).abs().max() <= 1e-4
    for layer, ref_pattern in enumerate(ref.attentions):
        assert (ref_pattern - cache[f"blocks.{layer}.attn.hook_pattern"]).abs().max() <= 1e-5, layer
    torch.testing.assert_close(ours(tokens), logits, atol=1e-5, rtol=0)  # the fused path too


def test_windows_are_where_transformers_puts_them(built):
    case, hf_model, ours = built
    expected = {"qwen2": (None, WINDOW, WINDOW), "qwen3": (None, WINDOW, WINDOW), "olmo2": (),
                "gemma2": (WINDOW, None, WINDOW), "gemma3_text": (WINDOW, None, WINDOW),
                "phi3": (WINDOW,) * 3, "mistral": (WINDOW,) * 3}
    assert ours.cfg.windows == expected[case]


@torch.no_grad()
def test_fused_capture_equals_explicit(built):
    _, _, ours = built
    dataset = from_tensor(torch.randint(3, 12, (3, N_POS), generator=torch.Generator().manual_seed(2)))
    fused = headscope.capture(ours, dataset, method="fused", progress=False)
    explicit = headscope.capture(ours, dataset, method="explicit", progress=False)
    assert_same_result(fused, explicit)


def test_model_object_equals_folder(built):
    case, hf_model, ours = built
    loaded = load_hf_model(hf_model)
    assert loaded.config == ours.cfg
    assert all(torch.equal(t, ours.state_dict()[n]) for n, t in loaded.state_dict.items())


def test_gemma_config_options():
    cfg = load_hf_model(_build("gemma3_text")).config
    assert (cfg.qk_norm, cfg.block_norms, cfg.rotary_base, cfg.local_rotary_base) == ("head", "sandwich", 1e6, 100.0)
    assert cfg.attn_scale == 16**-0.5 and cfg.embed_scale == 32**0.5 and cfg.tie_embeddings
    gemma2 = load_hf_model(_build("gemma2")).config
    assert (gemma2.attn_softcap, gemma2.final_softcap, gemma2.qk_norm) == (0.8, 0.1, "none")


def test_gpt_oss_is_refused_with_the_reason():
    config = transformers.GptOssConfig(**COMMON, num_local_experts=2, num_experts_per_tok=1,
                                       rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    model = transformers.GptOssForCausalLM(config)
    with pytest.raises(UnsupportedModelError, match="gpt_oss is not supported: its mixture-of-experts MLP"):
        load_hf_model(model)
