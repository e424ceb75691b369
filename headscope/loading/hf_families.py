"""The Llama-like families of 2026's small open models: Qwen2/3, Gemma 2/3, OLMo 2, Phi-3, Mistral.

Each is Llama's layout plus some of the model's options (docs/design.md, "The weight layout"): biases on
Q/K/V (Qwen2), QK-norm per head (Qwen3, Gemma 3) or over all heads (OLMo 2), sliding windows per layer
(`layer_types` + `sliding_window`; Mistral and Phi-3 window every layer), soft-capping, sandwich norms and
scaled embeddings (Gemma), norms after the sublayers only (OLMo 2), fused QKV and gate/up projections
(Phi-3, split here). Gemma's RMSNorms compute x * (1 + w): the loader stores 1 + w, so the model's one
RMSNorm serves. GPT-OSS is refused: its mixture-of-experts MLP with clamped SwiGLU has no dense
equivalent in headscope (its sink logits are implemented and tested in the model core).
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.errors import ModelFormatError, UnsupportedModelError
from headscope.loading.hf_architectures import (
    Family, KeyTable, _activation, _kv_bias, _kv_weight, _out_weight, _q_bias, _q_weight, _refuse_settings,
    _require, _rope, _same, _transposed, _unembedding,
)
from headscope.model.config import ModelConfig

Tensor = torch.Tensor


def _plus_one(w: Tensor, cfg: ModelConfig) -> Tensor:
    """Gemma's RMSNorm scales by 1 + w."""
    return w + 1.0


def _phi3_qkv(w: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Phi-3's qkv_proj [(H + 2K) * d, D] = [q rows | k rows | v rows] -> W_Q, W_K, W_V."""
    q, k, v = w.split([cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head, cfg.kv_heads * cfg.d_head])
    return _q_weight(q, cfg), _kv_weight(k, cfg), _kv_weight(v, cfg)


def _phi3_gate_up(w: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    """Phi-3's gate_up_proj [2M, D] = [gate rows | up rows] (Phi3MLP chunks it so) -> W_gate, W_in."""
    gate, up = w.chunk(2, dim=0)
    return gate.T, up.T


# ----- key tables ----------------------------------------------------------------------------------
_ATTN = {
    "layers.{}.self_attn.q_proj.weight": ("blocks.{}.attn.W_Q", _q_weight),
    "layers.{}.self_attn.k_proj.weight": ("blocks.{}.attn.W_K", _kv_weight),
    "layers.{}.self_attn.v_proj.weight": ("blocks.{}.attn.W_V", _kv_weight),
    "layers.{}.self_attn.o_proj.weight": ("blocks.{}.attn.W_O", _out_weight),
}
_QKV_BIAS = {
    "layers.{}.self_attn.q_proj.bias": ("blocks.{}.attn.b_Q", _q_bias),
    "layers.{}.self_attn.k_proj.bias": ("blocks.{}.attn.b_K", _kv_bias),
    "layers.{}.self_attn.v_proj.bias": ("blocks.{}.attn.b_V", _kv_bias),
}
_ALL_ATTN_BIAS = _QKV_BIAS | {"layers.{}.self_attn.o_proj.bias": ("blocks.{}.attn.b_O", _same)}
_MLP = {
    "layers.{}.mlp.gate_proj.weight": ("blocks.{}.mlp.W_gate", _transposed),
    "layers.{}.mlp.up_proj.weight": ("blocks.{}.mlp.W_in", _transposed),
    "layers.{}.mlp.down_proj.weight": ("blocks.{}.mlp.W_out", _transposed),
}
_EMBED = {"embed_tokens.weight": ("embed.W_E", _same)}


def _norms(names: dict[str, str], convert=_same) -> KeyTable:
    """Norm weights: Hugging Face module name -> our norm's name."""
    table: KeyTable = {f"layers.{{}}.{hf}.weight": (f"blocks.{{}}.{ours}.w", convert) for hf, ours in names.items()}
    table["norm.weight"] = ("ln_final.w", convert)
    return table


_PRE_NORMS = {"input_layernorm": "ln1", "post_attention_layernorm": "ln2"}
_QK_NORMS = {"self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm"}
_GEMMA_NORMS = {"input_layernorm": "ln1", "post_attention_layernorm": "ln1_post",
                "pre_feedforward_layernorm": "ln2", "post_feedforward_layernorm": "ln2_post"}
_OLMO2_NORMS = {"post_attention_layernorm": "ln1_post", "post_feedforward_layernorm": "ln2_post"}

_MISTRAL_KEYS = _EMBED | _ATTN | _MLP | _norms(_PRE_NORMS)
_QWEN2_KEYS = _MISTRAL_KEYS | _QKV_BIAS
_QWEN3_KEYS = _MISTRAL_KEYS | _norms(_QK_NORMS)
_OLMO2_KEYS = _EMBED | _ATTN | _MLP | _norms(_OLMO2_NORMS | _QK_NORMS)
_GEMMA2_KEYS = _EMBED | _ATTN | _MLP | _norms(_GEMMA_NORMS, _plus_one)
_GEMMA3_KEYS = _GEMMA2_KEYS | _norms(_QK_NORMS, _plus_one)
_PHI3_KEYS = _EMBED | _norms(_PRE_NORMS) | {
    "layers.{}.self_attn.qkv_proj.weight": (("blocks.{}.attn.W_Q", "blocks.{}.attn.W_K", "blocks.{}.attn.W_V"),
                                            _phi3_qkv),
    "layers.{}.self_attn.o_proj.weight": ("blocks.{}.attn.W_O", _out_weight),
    "layers.{}.mlp.gate_up_proj.weight": (("blocks.{}.mlp.W_gate", "blocks.{}.mlp.W_in"), _phi3_gate_up),
    "layers.{}.mlp.down_proj.weight": ("blocks.{}.mlp.W_out", _transposed),
}


# ----- config mapping ------------------------------------------------------------------------------
_DECODER_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                 "max_position_embeddings")


def _windows(hf: dict[str, Any], every_layer: bool, source: str) -> tuple[int | None, ...]:
    """Per-layer windows from `layer_types` and `sliding_window`; Mistral and Phi-3 window every layer."""
    n_layers, window = hf["num_hidden_layers"], hf.get("sliding_window")
    if every_layer:
        return (window,) * n_layers if window is not None else ()
    types = hf.get("layer_types") or ["full_attention"] * n_layers
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown or len(types) != n_layers:
        raise UnsupportedModelError(f"{source}: config setting layer_types = {types!r} is not supported "
                                    "(headscope implements full_attention and sliding_attention, one per layer)")
    if "sliding_attention" in types and window is None:
        raise ModelFormatError(f"{source}: layer_types has sliding_attention layers but sliding_window is null")
    windows = tuple(window if kind == "sliding_attention" else None for kind in types)
    return windows if any(w is not None for w in windows) else ()


def _gemma3_rope(hf: dict[str, Any], source: str) -> tuple[float, float]:
    """(global, local) RoPE bases from Gemma 3's per-layer-type `rope_parameters`, or its older flat keys."""
    params = hf.get("rope_parameters")
    if params is None or "full_attention" not in params:
        global_theta, _ = _rope(hf, "rope_theta", 1_000_000.0, source)
        return global_theta, float(hf.get("rope_local_base_freq", 10_000.0))
    bases = []
    for kind, default in (("full_attention", 1_000_000.0), ("sliding_attention", 10_000.0)):
        theta, _ = _rope({"rope_parameters": params.get(kind) or {}}, "rope_theta", default, source)
        bases.append(theta)
    return bases[0], bases[1]


def _decoder_config(hf: dict[str, Any], lm_head: bool, source: str, architecture: str, *,
                    activation_key: str = "hidden_act", every_layer_window: bool = False,
                    tied_default: bool = False, **options) -> ModelConfig:
    """The Llama-like core every family here shares, plus the family's `options` (ModelConfig fields)."""
    _require(hf, _DECODER_KEYS, source)
    _refuse_settings(hf, {"mlp_bias": (False,)}, source)
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    if "rotary_base" not in options:
        theta, partial = _rope(hf, "rope_theta", 10000.0, source)
        options |= {"rotary_base": theta, "rotary_dim": None if partial in (None, 1.0) else int(d_head * partial)}
    return ModelConfig(
        architecture=architecture, d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads"), d_head=d_head, d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"], d_mlp=hf["intermediate_size"],
        act_fn=_activation(hf, activation_key, source), gated_mlp=True, norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), positional="rotary",
        windows=_windows(hf, every_layer_window, source),
        **_unembedding(lm_head, hf.get("tie_word_embeddings", tied_default)), **options,
    )


def _bias(hf: dict[str, Any]) -> dict[str, bool]:
    """`attention_bias` puts biases on all four projections (Qwen3, OLMo 2, Gemma)."""
    bias = bool(hf.get("attention_bias", False))
    return {"attn_bias": bias, "attn_out_bias": bias}


def _mistral_config(hf, lm_head, source):
    _refuse_settings(hf, {"attention_bias": (False,)}, source)
    return _decoder_config(hf, lm_head, source, "mistral", every_layer_window=True)


def _phi3_config(hf, lm_head, source):
    _refuse_settings(hf, {"attention_bias": (False,)}, source)
    return _decoder_config(hf, lm_head, source, "phi3", every_layer_window=True)


def _qwen2_config(hf, lm_head, source):
    return _decoder_config(hf, lm_head, source, "qwen2", attn_bias=True)


def _qwen3_config(hf, lm_head, source):
    return _decoder_config(hf, lm_head, source, "qwen3", qk_norm="head", **_bias(hf))


def _olmo2_config(hf, lm_head, source):
    return _decoder_config(hf, lm_head, source, "olmo2", qk_norm="all", block_norms="output", **_bias(hf))


def _gemma_options(hf: dict[str, Any], source: str) -> dict[str, Any]:
    _require(hf, ("query_pre_attn_scalar",), source)
    return {"attn_scale": hf["query_pre_attn_scalar"] ** -0.5, "attn_softcap": hf.get("attn_logit_softcapping"),
            "final_softcap": hf.get("final_logit_softcapping"), "block_norms": "sandwich",
            "embed_scale": hf["hidden_size"] ** 0.5, **_bias(hf)}


def _gemma2_config(hf, lm_head, source):
    return _decoder_config(hf, lm_head, source, "gemma2", activation_key="hidden_activation", tied_default=True,
                           **_gemma_options(hf, source))


def _gemma3_config(hf, lm_head, source):
    _refuse_settings(hf, {"use_bidirectional_attention": (False, None)}, source)
    global_base, local_base = _gemma3_rope(hf, source)
    return _decoder_config(hf, lm_head, source, "gemma3", activation_key="hidden_activation", tied_default=True,
                           qk_norm="head", rotary_base=global_base, local_rotary_base=local_base,
                           **_gemma_options(hf, source))


def _gpt_oss_config(hf, lm_head, source):
    raise UnsupportedModelError(
        f"{source}: gpt_oss is not supported: its mixture-of-experts MLP (router, clamped SwiGLU experts) has no "
        "dense equivalent in headscope; its attention sinks are (ModelConfig.attn_sinks)")


_LLAMA_LIKE = {"base_prefix": "model.", "embed_key": "embed_tokens.weight", "unembed_keys": ("lm_head.weight",),
               "buffers": ("rotary_emb.inv_freq", "layers.{}.self_attn.rotary_emb.inv_freq")}
FAMILIES = {
    "mistral": Family(_mistral_config, _MISTRAL_KEYS, **_LLAMA_LIKE),
    "phi3": Family(_phi3_config, _PHI3_KEYS, **_LLAMA_LIKE),
    "qwen2": Family(_qwen2_config, _QWEN2_KEYS, **_LLAMA_LIKE),
    "qwen3": Family(_qwen3_config, _QWEN3_KEYS, attn_bias_keys=_ALL_ATTN_BIAS, **_LLAMA_LIKE),
    "olmo2": Family(_olmo2_config, _OLMO2_KEYS, attn_bias_keys=_ALL_ATTN_BIAS, **_LLAMA_LIKE),
    "gemma2": Family(_gemma2_config, _GEMMA2_KEYS, attn_bias_keys=_ALL_ATTN_BIAS, **_LLAMA_LIKE),
    "gemma3": Family(_gemma3_config, _GEMMA3_KEYS, attn_bias_keys=_ALL_ATTN_BIAS, **_LLAMA_LIKE),
    "gpt_oss": Family(_gpt_oss_config, {}, **_LLAMA_LIKE),
}
MODEL_TYPES = {"mistral": "mistral", "phi3": "phi3", "qwen2": "qwen2", "qwen3": "qwen3", "olmo2": "olmo2",
               "gemma2": "gemma2", "gemma3_text": "gemma3", "gpt_oss": "gpt_oss"}
_CLASS_PREFIXES = {"mistral": "Mistral", "phi3": "Phi3", "qwen2": "Qwen2", "qwen3": "Qwen3", "olmo2": "Olmo2",
                   "gemma2": "Gemma2", "gemma3": "Gemma3", "gpt_oss": "GptOss"}
CLASSES = {f"{prefix}ForCausalLM": (family, True) for family, prefix in _CLASS_PREFIXES.items()}
CLASSES |= {f"{prefix}Model": (family, False) for family, prefix in _CLASS_PREFIXES.items() if family != "gemma3"}
CLASSES["Gemma3TextModel"] = ("gemma3", False)
