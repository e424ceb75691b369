"""What the GGUF loader knows per llama.cpp architecture: tensor names, extra metadata, config options.

llama.cpp names tensors per architecture in gguf-py's `constants.py` (`MODEL_TENSORS`, `TENSOR_NAMES`)
and writes them in convert_hf_to_gguf.py: qwen2 adds Q/K/V biases, qwen3 `attn_q_norm`/`attn_k_norm`,
gemma2 the post-sublayer norms `post_attention_norm`/`post_ffw_norm` (gemma3 both), phi3 fuses
`attn_qkv` ([q | k | v] rows) and `ffn_up` ([gate | up] rows, split by llama.cpp's SwiGLU). Gemma's
attention scale is 1/sqrt(key_length), as llama.cpp computes it for every size but the 27B models (their
query_pre_attn_scalar is d_model / n_heads; a `{arch}.attention.scale` key, when present, wins).
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.errors import ModelFormatError
from headscope.model.config import ModelConfig

Name = str | tuple[str, ...]

# GGUF tensor name -> our weight name; `{}` is the layer index. `output.weight` is absent when tied.
GLOBAL_TENSORS = {
    "token_embd.weight": "embed.W_E",
    "output_norm.weight": "ln_final.w",
    "output.weight": "unembed.W_U",
}
_ATTN = {
    "blk.{}.attn_q.weight": "blocks.{}.attn.W_Q",
    "blk.{}.attn_k.weight": "blocks.{}.attn.W_K",
    "blk.{}.attn_v.weight": "blocks.{}.attn.W_V",
    "blk.{}.attn_output.weight": "blocks.{}.attn.W_O",
}
_MLP = {
    "blk.{}.ffn_gate.weight": "blocks.{}.mlp.W_gate",
    "blk.{}.ffn_up.weight": "blocks.{}.mlp.W_in",
    "blk.{}.ffn_down.weight": "blocks.{}.mlp.W_out",
}
_NORMS = {"blk.{}.attn_norm.weight": "blocks.{}.ln1.w", "blk.{}.ffn_norm.weight": "blocks.{}.ln2.w"}
_BIASES = {"blk.{}.attn_q.bias": "blocks.{}.attn.b_Q", "blk.{}.attn_k.bias": "blocks.{}.attn.b_K",
           "blk.{}.attn_v.bias": "blocks.{}.attn.b_V"}
_QK_NORMS = {"blk.{}.attn_q_norm.weight": "blocks.{}.attn.q_norm.w",
             "blk.{}.attn_k_norm.weight": "blocks.{}.attn.k_norm.w"}
_POST_NORMS = {"blk.{}.post_attention_norm.weight": "blocks.{}.ln1_post.w",
               "blk.{}.post_ffw_norm.weight": "blocks.{}.ln2_post.w"}
LAYER_TENSORS: dict[str, dict[str, Name]] = {
    "llama": _NORMS | _ATTN | _MLP,
    "qwen2": _NORMS | _ATTN | _MLP | _BIASES,
    "qwen3": _NORMS | _ATTN | _MLP | _QK_NORMS,
    "gemma2": _NORMS | _ATTN | _MLP | _POST_NORMS,
    "gemma3": _NORMS | _ATTN | _MLP | _POST_NORMS | _QK_NORMS,
    "phi3": _NORMS | {
        "blk.{}.attn_qkv.weight": ("blocks.{}.attn.W_Q", "blocks.{}.attn.W_K", "blocks.{}.attn.W_V"),
        "blk.{}.attn_output.weight": "blocks.{}.attn.W_O",
        "blk.{}.ffn_up.weight": ("blocks.{}.mlp.W_gate", "blocks.{}.mlp.W_in"),
        "blk.{}.ffn_down.weight": "blocks.{}.mlp.W_out",
    },
}

# Metadata each architecture may carry beyond llama's (`{}` is the architecture prefix).
_WINDOW_KEYS = {"window": "{}.attention.sliding_window", "window_pattern": "{}.attention.sliding_window_pattern"}
_GEMMA_KEYS = _WINDOW_KEYS | {"attn_softcap": "{}.attn_logit_softcapping",
                              "final_softcap": "{}.final_logit_softcapping", "attn_scale": "{}.attention.scale"}
ARCH_KEYS = {
    "gemma2": _GEMMA_KEYS,
    "gemma3": _GEMMA_KEYS | {"local_base": "{}.rope.freq_base_swa"},
    "phi3": _WINDOW_KEYS,
}
# llama.cpp's sliding-window pattern when the file names none: every n-th layer global (0: all local).
_DEFAULT_PATTERN = {"gemma2": 2, "gemma3": 6, "phi3": 0}


def tensor_names(config: ModelConfig, arch: str) -> dict[str, Name]:
    """GGUF name -> our name (a tuple for a fused tensor) for every tensor this config may hold."""
    names: dict[str, Name] = dict(GLOBAL_TENSORS)
    for layer in range(config.n_layers):
        for src, dst in LAYER_TENSORS[arch].items():
            names[src.format(layer)] = tuple(d.format(layer) for d in dst) if isinstance(dst, tuple) else dst.format(layer)
    return names


def split_fused(names: tuple[str, ...], weight: torch.Tensor, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Phi-3's fused tensors in our layout: attn_qkv [(H + 2K) d, D] -> W_Q, W_K, W_V; ffn_up [2M, D] ->
    W_gate (the first M rows), W_in."""
    if len(names) == 2:
        gate, up = weight.chunk(2, dim=0)
        return {names[0]: gate.T.contiguous(), names[1]: up.T.contiguous()}
    sizes = [cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head, cfg.kv_heads * cfg.d_head]
    parts = weight.split(sizes, dim=0)
    return {name: part.view(-1, cfg.d_head, cfg.d_model).transpose(1, 2).contiguous()
            for name, part in zip(names, parts)}


def _windows(arch: str, value: dict[str, Any], n_layers: int, path) -> tuple[int | None, ...]:
    window, pattern = value.get("window"), value.get("window_pattern")
    if not window:
        return ()
    if pattern is None:
        pattern = _DEFAULT_PATTERN[arch]
    if isinstance(pattern, list):  # one flag per layer: True = local
        if len(pattern) != n_layers:
            raise ModelFormatError(f"{path}: {arch}.attention.sliding_window_pattern has {len(pattern)} entries "
                                   f"for {n_layers} layers")
        return tuple(int(window) if local else None for local in pattern)
    n = int(pattern)  # llama.cpp: layer il is local when n == 0 or il % n < n - 1
    return tuple(int(window) if n == 0 or layer % n < n - 1 else None for layer in range(n_layers))


def family_options(arch: str, value: dict[str, Any], metadata: dict[str, Any], path) -> dict[str, Any]:
    """The ModelConfig fields beyond llama's that an architecture's metadata sets (`value`: llama's keys read)."""
    if arch == "llama":
        return {}
    extra = {name: metadata.get(key.format(arch)) for name, key in ARCH_KEYS.get(arch, {}).items()}
    d_head = value["key_length"] or value["d_model"] // value["n_heads"]
    options: dict[str, Any] = {"windows": _windows(arch, extra, value["n_layers"], path)}
    if arch == "qwen2":
        options["attn_bias"] = True
    if arch in ("qwen3", "gemma3"):
        options["qk_norm"] = "head"
    if arch in ("gemma2", "gemma3"):
        options |= {"act_fn": "gelu_new", "block_norms": "sandwich", "embed_scale": value["d_model"] ** 0.5,
                    "attn_scale": extra["attn_scale"] or d_head**-0.5,
                    "attn_softcap": extra["attn_softcap"] or None, "final_softcap": extra["final_softcap"] or None}
    if arch == "gemma3":
        options["local_rotary_base"] = float(extra["local_base"] or 10000.0)
    return options
