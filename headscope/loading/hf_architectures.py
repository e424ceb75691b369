"""What headscope knows of each Hugging Face architecture: GPT-2, Llama, BERT and GPT-NeoX here, the
Llama-like families of issue 19 (Qwen, Gemma, OLMo 2, Phi-3, Mistral) in `hf_families.py`.

A per-family function maps a config dict to a `ModelConfig`, refusing settings the model does not
implement, and exact key tables (`{}` is the layer index) rename and reshape every weight to the layout
of docs/design.md. A weight no table names, or a table entry with no weight, is an error: nothing is
silently dropped except the buffers, tied copies and task heads listed here by name. Reading files,
model objects and the hub is `hf.py`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from headscope.errors import ModelFormatError, UnsupportedModelError
from headscope.model.config import Activation, ModelConfig

Tensor = torch.Tensor
Conversion = Callable[[Tensor, ModelConfig], Tensor | tuple[Tensor, ...]]

# Hugging Face activation names -> ours. `gelu_pytorch_tanh` is GPT-2's `gelu_new` formula.
_ACTIVATIONS: dict[str, Activation] = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


# ----- conversions: Hugging Face tensor -> our layout ----------------------------------------------
def _same(w: Tensor, cfg: ModelConfig) -> Tensor:
    return w


def _transposed(w: Tensor, cfg: ModelConfig) -> Tensor:
    """nn.Linear stores [out, in]; we multiply x @ W, so [in, out]."""
    return w.T


def _linear_heads(w: Tensor, n_heads: int, cfg: ModelConfig) -> Tensor:
    """nn.Linear [n_heads * d_head, D] -> [n_heads, D, d_head]: W[h] = w[h*d:(h+1)*d, :].T."""
    return w.reshape(n_heads, cfg.d_head, -1).transpose(1, 2)


def _q_weight(w: Tensor, cfg: ModelConfig) -> Tensor:
    return _linear_heads(w, cfg.n_heads, cfg)


def _kv_weight(w: Tensor, cfg: ModelConfig) -> Tensor:
    return _linear_heads(w, cfg.kv_heads, cfg)


def _q_bias(b: Tensor, cfg: ModelConfig) -> Tensor:
    return b.reshape(cfg.n_heads, cfg.d_head)


def _kv_bias(b: Tensor, cfg: ModelConfig) -> Tensor:
    return b.reshape(cfg.kv_heads, cfg.d_head)


def _out_weight(w: Tensor, cfg: ModelConfig) -> Tensor:
    """nn.Linear [D, H * d] output projection -> [H, d, D]."""
    return w.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)


# GPT-2 keeps its weights in `Conv1D` modules, which store [in, out] (the transpose of nn.Linear), so
# c_attn, c_proj and c_fc are already in x @ W orientation (transformers `pytorch_utils.Conv1D`;
# nanoGPT names the same list `transposed`). The fused c_attn output is [q | k | v], each H * d wide.
def _conv1d_qkv_weight(w: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Conv1D c_attn [D, 3 * H * d] -> W_Q, W_K, W_V, each [H, D, d]."""
    return tuple(part.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).transpose(0, 1) for part in w.chunk(3, dim=1))


def _conv1d_qkv_bias(b: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(b.reshape(3, cfg.n_heads, cfg.d_head).unbind(0))


def _conv1d_out_weight(w: Tensor, cfg: ModelConfig) -> Tensor:
    """Conv1D c_proj [H * d, D] -> [H, d, D]."""
    return w.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)


# GPT-NeoX fuses Q, K and V per head: the output of `query_key_value` is viewed as [H, 3 * d] and chunked
# into q, k, v along the last axis (transformers `modeling_gpt_neox.py`, GPTNeoXAttention.forward), so its
# rows are ordered [head, (q, k, v), d], unlike GPT-2's [(q, k, v), head, d].
def _neox_qkv_weight(w: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """[H * 3 * d, D] -> W_Q, W_K, W_V, each [H, D, d]."""
    return tuple(part.transpose(1, 2) for part in w.reshape(cfg.n_heads, 3, cfg.d_head, cfg.d_model).unbind(1))


def _neox_qkv_bias(b: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(b.reshape(cfg.n_heads, 3, cfg.d_head).unbind(1))


# ----- key tables: Hugging Face name (base model, no prefix) -> (our name or names, conversion) -------
QKV = ("blocks.{}.attn.W_Q", "blocks.{}.attn.W_K", "blocks.{}.attn.W_V")
QKV_BIAS = ("blocks.{}.attn.b_Q", "blocks.{}.attn.b_K", "blocks.{}.attn.b_V")
KeyTable = dict[str, tuple[str | tuple[str, ...], Conversion]]

_GPT2_KEYS: KeyTable = {
    "wte.weight": ("embed.W_E", _same),
    "wpe.weight": ("pos_embed.W_pos", _same),
    "h.{}.ln_1.weight": ("blocks.{}.ln1.w", _same),
    "h.{}.ln_1.bias": ("blocks.{}.ln1.b", _same),
    "h.{}.attn.c_attn.weight": (QKV, _conv1d_qkv_weight),
    "h.{}.attn.c_attn.bias": (QKV_BIAS, _conv1d_qkv_bias),
    "h.{}.attn.c_proj.weight": ("blocks.{}.attn.W_O", _conv1d_out_weight),
    "h.{}.attn.c_proj.bias": ("blocks.{}.attn.b_O", _same),
    "h.{}.ln_2.weight": ("blocks.{}.ln2.w", _same),
    "h.{}.ln_2.bias": ("blocks.{}.ln2.b", _same),
    "h.{}.mlp.c_fc.weight": ("blocks.{}.mlp.W_in", _same),  # Conv1D: already [D, M]
    "h.{}.mlp.c_fc.bias": ("blocks.{}.mlp.b_in", _same),
    "h.{}.mlp.c_proj.weight": ("blocks.{}.mlp.W_out", _same),  # Conv1D: already [M, D]
    "h.{}.mlp.c_proj.bias": ("blocks.{}.mlp.b_out", _same),
    "ln_f.weight": ("ln_final.w", _same),
    "ln_f.bias": ("ln_final.b", _same),
}

_LLAMA_KEYS: KeyTable = {
    "embed_tokens.weight": ("embed.W_E", _same),
    "layers.{}.input_layernorm.weight": ("blocks.{}.ln1.w", _same),
    "layers.{}.self_attn.q_proj.weight": ("blocks.{}.attn.W_Q", _q_weight),
    "layers.{}.self_attn.k_proj.weight": ("blocks.{}.attn.W_K", _kv_weight),
    "layers.{}.self_attn.v_proj.weight": ("blocks.{}.attn.W_V", _kv_weight),
    "layers.{}.self_attn.o_proj.weight": ("blocks.{}.attn.W_O", _out_weight),
    "layers.{}.post_attention_layernorm.weight": ("blocks.{}.ln2.w", _same),
    "layers.{}.mlp.gate_proj.weight": ("blocks.{}.mlp.W_gate", _transposed),
    "layers.{}.mlp.up_proj.weight": ("blocks.{}.mlp.W_in", _transposed),
    "layers.{}.mlp.down_proj.weight": ("blocks.{}.mlp.W_out", _transposed),
    "norm.weight": ("ln_final.w", _same),
}

# With post_norm, ln1 is the norm after attention and ln2 the one after the MLP (docs/design.md).
_BERT_KEYS: KeyTable = {
    "embeddings.word_embeddings.weight": ("embed.W_E", _same),
    "embeddings.position_embeddings.weight": ("pos_embed.W_pos", _same),
    "embeddings.token_type_embeddings.weight": ("token_type_embed.W_token_type", _same),
    "embeddings.LayerNorm.weight": ("embed_ln.w", _same),
    "embeddings.LayerNorm.bias": ("embed_ln.b", _same),
    "encoder.layer.{}.attention.self.query.weight": ("blocks.{}.attn.W_Q", _q_weight),
    "encoder.layer.{}.attention.self.query.bias": ("blocks.{}.attn.b_Q", _q_bias),
    "encoder.layer.{}.attention.self.key.weight": ("blocks.{}.attn.W_K", _kv_weight),
    "encoder.layer.{}.attention.self.key.bias": ("blocks.{}.attn.b_K", _kv_bias),
    "encoder.layer.{}.attention.self.value.weight": ("blocks.{}.attn.W_V", _kv_weight),
    "encoder.layer.{}.attention.self.value.bias": ("blocks.{}.attn.b_V", _kv_bias),
    "encoder.layer.{}.attention.output.dense.weight": ("blocks.{}.attn.W_O", _out_weight),
    "encoder.layer.{}.attention.output.dense.bias": ("blocks.{}.attn.b_O", _same),
    "encoder.layer.{}.attention.output.LayerNorm.weight": ("blocks.{}.ln1.w", _same),
    "encoder.layer.{}.attention.output.LayerNorm.bias": ("blocks.{}.ln1.b", _same),
    "encoder.layer.{}.intermediate.dense.weight": ("blocks.{}.mlp.W_in", _transposed),
    "encoder.layer.{}.intermediate.dense.bias": ("blocks.{}.mlp.b_in", _same),
    "encoder.layer.{}.output.dense.weight": ("blocks.{}.mlp.W_out", _transposed),
    "encoder.layer.{}.output.dense.bias": ("blocks.{}.mlp.b_out", _same),
    "encoder.layer.{}.output.LayerNorm.weight": ("blocks.{}.ln2.w", _same),
    "encoder.layer.{}.output.LayerNorm.bias": ("blocks.{}.ln2.b", _same),
}

_NEOX_KEYS: KeyTable = {
    "embed_in.weight": ("embed.W_E", _same),
    "layers.{}.input_layernorm.weight": ("blocks.{}.ln1.w", _same),
    "layers.{}.input_layernorm.bias": ("blocks.{}.ln1.b", _same),
    "layers.{}.attention.query_key_value.weight": (QKV, _neox_qkv_weight),
    "layers.{}.attention.dense.weight": ("blocks.{}.attn.W_O", _out_weight),
    "layers.{}.post_attention_layernorm.weight": ("blocks.{}.ln2.w", _same),
    "layers.{}.post_attention_layernorm.bias": ("blocks.{}.ln2.b", _same),
    "layers.{}.mlp.dense_h_to_4h.weight": ("blocks.{}.mlp.W_in", _transposed),
    "layers.{}.mlp.dense_h_to_4h.bias": ("blocks.{}.mlp.b_in", _same),
    "layers.{}.mlp.dense_4h_to_h.weight": ("blocks.{}.mlp.W_out", _transposed),
    "layers.{}.mlp.dense_4h_to_h.bias": ("blocks.{}.mlp.b_out", _same),
    "final_layer_norm.weight": ("ln_final.w", _same),
    "final_layer_norm.bias": ("ln_final.b", _same),
}
# Present when the config's `attention_bias` is true (always, before transformers 5 made it optional).
_NEOX_ATTN_BIAS_KEYS: KeyTable = {
    "layers.{}.attention.query_key_value.bias": (QKV_BIAS, _neox_qkv_bias),
    "layers.{}.attention.dense.bias": ("blocks.{}.attn.b_O", _same),
}


# ----- config mapping ------------------------------------------------------------------------------
def _require(hf: dict[str, Any], keys: tuple[str, ...], source: str) -> None:
    missing = [key for key in keys if hf.get(key) is None]
    if missing:
        raise ModelFormatError(f"{source}: config.json lacks {', '.join(missing)}")


def _refuse_settings(hf: dict[str, Any], accepted: dict[str, tuple], source: str) -> None:
    """Each listed setting must be absent or hold a value the model implements."""
    for key, values in accepted.items():
        if key in hf and hf[key] not in values:
            raise UnsupportedModelError(f"{source}: config setting {key} = {hf[key]!r} is not supported "
                                        f"(headscope implements {' or '.join(map(repr, values))})")


def _activation(hf: dict[str, Any], key: str, source: str) -> Activation:
    name = hf.get(key)
    if name not in _ACTIVATIONS:
        raise UnsupportedModelError(f"{source}: config setting {key} = {name!r} is not supported "
                                    f"(supported: {', '.join(sorted(_ACTIVATIONS))})")
    return _ACTIVATIONS[name]


def _rope(hf: dict[str, Any], theta_key: str, default_theta: float, source: str) -> tuple[float, float | None]:
    """(rope theta, partial rotary factor) from transformers 5's `rope_parameters`, or the older flat keys.

    Only plain RoPE is implemented: any `rope_scaling` or a `rope_type` other than "default" is refused.
    """
    _refuse_settings(hf, {"rope_scaling": (None,)}, source)
    params = hf.get("rope_parameters")
    if params is None:
        return float(hf.get(theta_key, default_theta)), None
    unknown = sorted(set(params) - {"rope_type", "rope_theta", "partial_rotary_factor"})
    if params.get("rope_type", "default") != "default" or unknown:
        raise UnsupportedModelError(f"{source}: config setting rope_parameters = {params!r} is not supported "
                                    "(headscope implements rope_type 'default' without scaling)")
    return float(params.get("rope_theta", default_theta)), params.get("partial_rotary_factor")


def _unembedding(lm_head: bool, tied: bool) -> dict[str, bool]:
    """A head class always unembeds; a base class (GPT2Model, LlamaModel) can only through tied weights."""
    return {"has_unembed": lm_head or tied, "tie_embeddings": tied}


def _gpt2_config(hf: dict[str, Any], lm_head: bool, source: str) -> ModelConfig:
    _require(hf, ("n_embd", "n_layer", "n_head", "vocab_size", "n_positions"), source)
    # `reorder_and_upcast_attn` is accepted: it changes only the order of float arithmetic.
    _refuse_settings(hf, {"scale_attn_by_inverse_layer_idx": (False,), "add_cross_attention": (False,)}, source)
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    return ModelConfig(
        architecture="gpt2", d_model=d_model, n_layers=hf["n_layer"], n_heads=n_heads, d_head=d_model // n_heads,
        d_vocab=hf["vocab_size"], n_ctx=hf["n_positions"], d_mlp=hf.get("n_inner") or 4 * d_model,
        act_fn=_activation(hf, "activation_function", source), norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), positional="learned",
        attn_bias=True, attn_out_bias=True, mlp_bias=True,
        attn_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        **_unembedding(lm_head, hf.get("tie_word_embeddings", True)),
    )


def _llama_config(hf: dict[str, Any], lm_head: bool, source: str) -> ModelConfig:
    _require(hf, ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "max_position_embeddings"), source)
    _refuse_settings(hf, {"attention_bias": (False,), "mlp_bias": (False,)}, source)
    theta, partial = _rope(hf, "rope_theta", 10000.0, source)
    if partial not in (None, 1.0):
        raise UnsupportedModelError(f"{source}: partial_rotary_factor {partial} is not supported for Llama")
    n_heads = hf["num_attention_heads"]
    return ModelConfig(
        architecture="llama", d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads"), d_head=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_vocab=hf["vocab_size"], n_ctx=hf["max_position_embeddings"], d_mlp=hf["intermediate_size"],
        act_fn=_activation(hf, "hidden_act", source), gated_mlp=True, norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), positional="rotary", rotary_base=theta,
        **_unembedding(lm_head, hf.get("tie_word_embeddings", False)),
    )


def _bert_config(hf: dict[str, Any], lm_head: bool, source: str) -> ModelConfig:
    """The encoder only: the MLM head of BertForMaskedLM is dropped, so there is no unembedding."""
    _require(hf, ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "max_position_embeddings"), source)
    _refuse_settings(hf, {"position_embedding_type": ("absolute",), "is_decoder": (False,),
                          "add_cross_attention": (False,)}, source)
    n_heads = hf["num_attention_heads"]
    return ModelConfig(
        architecture="bert", d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        d_head=hf["hidden_size"] // n_heads, d_vocab=hf["vocab_size"], n_ctx=hf["max_position_embeddings"],
        d_mlp=hf["intermediate_size"], act_fn=_activation(hf, "hidden_act", source), norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12), post_norm=True, final_norm=False, embed_norm=True,
        positional="learned", causal=False, n_token_types=hf.get("type_vocab_size", 2),
        attn_bias=True, attn_out_bias=True, mlp_bias=True, has_unembed=False,
    )


def _neox_config(hf: dict[str, Any], lm_head: bool, source: str) -> ModelConfig:
    _require(hf, ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "max_position_embeddings"), source)
    theta, partial = _rope(hf, "rotary_emb_base", 10000.0, source)
    partial = hf.get("rotary_pct", 0.25) if partial is None else partial
    n_heads, bias = hf["num_attention_heads"], hf.get("attention_bias", True)
    d_head = hf["hidden_size"] // n_heads
    return ModelConfig(
        architecture="neox", d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        d_head=d_head, d_vocab=hf["vocab_size"], n_ctx=hf["max_position_embeddings"],
        d_mlp=hf["intermediate_size"], act_fn=_activation(hf, "hidden_act", source), norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-5), positional="rotary", rotary_dim=int(d_head * partial),
        rotary_base=theta, parallel_attn_mlp=hf.get("use_parallel_residual", True),
        attn_bias=bias, attn_out_bias=bias, mlp_bias=True,
        **_unembedding(lm_head, hf.get("tie_word_embeddings", False)),
    )


# ----- families ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One Hugging Face architecture family: its config map, weight-name table and layout quirks."""

    config: Callable[[dict[str, Any], bool, str], ModelConfig]
    keys: KeyTable
    base_prefix: str  # what a head class puts before the base model's keys
    embed_key: str  # the token embedding, which a tied unembedding copies
    unembed_keys: tuple[str, ...] = ()  # names the LM head's weight goes by (GPT-NeoX: file vs. model object)
    attn_bias_keys: KeyTable | None = None  # extra table used when the config has attention biases
    buffers: tuple[str, ...] = ()  # non-weight tensors older files carry (masks, RoPE frequencies)
    dropped_heads: tuple[str, ...] = ()  # task heads we deliberately do not load
    encoder: bool = False  # the tokenizer's post-processor adds [CLS]/[SEP]


_FAMILIES = {
    "gpt2": Family(
        _gpt2_config, _GPT2_KEYS, "transformer.", "wte.weight", ("lm_head.weight",),
        buffers=("h.{}.attn.bias", "h.{}.attn.masked_bias"),
    ),
    "llama": Family(
        _llama_config, _LLAMA_KEYS, "model.", "embed_tokens.weight", ("lm_head.weight",),
        buffers=("rotary_emb.inv_freq", "layers.{}.self_attn.rotary_emb.inv_freq"),
    ),
    "bert": Family(
        _bert_config, _BERT_KEYS, "bert.", "embeddings.word_embeddings.weight",
        buffers=("embeddings.position_ids",),
        # BertModel's pooler and BertForMaskedLM's prediction head sit on top of the last hidden state.
        dropped_heads=("pooler.dense.weight", "pooler.dense.bias", "cls.predictions.bias",
                       "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
                       "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
                       "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias"),
        encoder=True,
    ),
    "neox": Family(
        _neox_config, _NEOX_KEYS, "gpt_neox.", "embed_in.weight", ("embed_out.weight", "lm_head.weight"),
        attn_bias_keys=_NEOX_ATTN_BIAS_KEYS,
        buffers=("layers.{}.attention.rotary_emb.inv_freq", "layers.{}.attention.bias",
                 "layers.{}.attention.masked_bias", "rotary_emb.inv_freq"),
    ),
}
_MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "bert": "bert", "gpt_neox": "neox"}
# Hugging Face class -> (family, whether it carries a language-model head). BertForMaskedLM loads as its encoder.
_CLASSES = {
    "GPT2LMHeadModel": ("gpt2", True), "GPT2Model": ("gpt2", False),
    "LlamaForCausalLM": ("llama", True), "LlamaModel": ("llama", False),
    "BertModel": ("bert", False), "BertForMaskedLM": ("bert", False),
    "GPTNeoXForCausalLM": ("neox", True), "GPTNeoXModel": ("neox", False),
}


def _known() -> tuple[dict[str, Family], dict[str, str], dict[str, tuple[str, bool]]]:
    """Families, model types and classes of this module and of `hf_families.py` (imported here, on
    first use, because it builds on this module's conversions)."""
    from headscope.loading import hf_families

    return (_FAMILIES | hf_families.FAMILIES, _MODEL_TYPES | hf_families.MODEL_TYPES,
            _CLASSES | hf_families.CLASSES)


def family_and_head(hf: dict[str, Any], class_name: str | None, source: str) -> tuple[Family, bool]:
    """The family of `model_type`, and whether the class carries a language-model head."""
    families, model_types, classes = _known()
    model_type = hf.get("model_type")
    if model_type not in model_types:
        raise UnsupportedModelError(f"{source}: model_type {model_type!r} is not supported "
                                    f"(supported: {', '.join(sorted(model_types))})")
    family = model_types[model_type]
    if class_name is None:  # no `architectures` entry: assume the language-model class
        return families[family], family != "bert"
    if class_name not in classes:
        raise UnsupportedModelError(f"{source}: architecture {class_name} is not supported "
                                    f"(supported: {', '.join(sorted(classes))})")
    class_family, lm_head = classes[class_name]
    if class_family != family:
        raise ModelFormatError(f"{source}: architecture {class_name} does not match model_type {model_type!r}")
    return families[family], lm_head


def architecture_class(hf: dict[str, Any], source: str) -> str | None:
    """The one class config.json's `architectures` names, or None when it names none."""
    architectures = hf.get("architectures") or [None]
    if len(architectures) != 1:
        raise UnsupportedModelError(f"{source}: config.json lists several architectures {architectures}")
    return architectures[0]


def model_config(family: Family, hf: dict[str, Any], lm_head: bool, source: str) -> ModelConfig:
    """Our `ModelConfig` for this family; a config the dataclass rejects is a format error."""
    try:
        return family.config(hf, lm_head, source)
    except (ValueError, TypeError) as err:
        raise ModelFormatError(f"{source}: inconsistent config.json: {err}") from err


# ----- weights -------------------------------------------------------------------------------------
def _expand(templates, n_layers: int) -> set[str]:
    """Every concrete name of templates that may hold `{}` for the layer index."""
    return {t.format(layer) for t in templates for layer in range(n_layers)}


def _strip_base_prefix(weights: dict[str, Tensor], prefix: str, source: str) -> dict[str, Tensor]:
    """Head classes save the base model under a prefix (`transformer.h.0...`); base classes and some
    files (the original `gpt2` upload) do not. Strip it, refusing a name that appears both ways."""
    stripped = {key.removeprefix(prefix): tensor for key, tensor in weights.items()}
    if len(stripped) != len(weights):
        raise ModelFormatError(f"{source}: weights appear both with and without the {prefix!r} prefix")
    return stripped


def _drop_known_extras(weights: dict[str, Tensor], family: Family, n_layers: int) -> dict[str, Tensor]:
    """Remove the buffers and task heads this family lists by name; nothing else."""
    extras = _expand(family.buffers, n_layers) | set(family.dropped_heads)
    return {key: tensor for key, tensor in weights.items() if key not in extras}


def _take_unembedding(weights: dict[str, Tensor], family: Family, cfg: ModelConfig,
                      source: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split off the LM head's weight: (the other weights, {"unembed.W_U": ...} when untied, else {}).

    A tied head's weight (transformers' state_dict lists it) must equal the embedding and is dropped.
    Without an unembedding (an encoder, a base class) any LM head weight stays, to be reported unused.
    """
    present = [key for key in family.unembed_keys if key in weights]
    if len(present) > 1:
        raise ModelFormatError(f"{source}: both {' and '.join(present)} hold the unembedding")
    if not cfg.has_unembed or (cfg.tie_embeddings and not present):
        return weights, {}
    if not present:
        raise ModelFormatError(f"{source}: missing weights: {family.unembed_keys[0]} (the unembedding; "
                               "tie_word_embeddings is false)")
    rest = {key: tensor for key, tensor in weights.items() if key != present[0]}
    head = weights[present[0]]
    if not cfg.tie_embeddings:
        return rest, {"unembed.W_U": head.T}
    if family.embed_key in weights and not torch.equal(head, weights[family.embed_key]):
        raise ModelFormatError(f"{source}: tie_word_embeddings is true but {present[0]} differs from "
                               f"{family.embed_key}")
    return rest, {}


def _key_table(family: Family, cfg: ModelConfig) -> KeyTable:
    """The family's table, with the attention-bias entries when the config has them, one row per layer."""
    templates = dict(family.keys)
    if family.attn_bias_keys is not None and cfg.attn_bias:
        templates |= family.attn_bias_keys
    table = {}
    for src, (dst, conversion) in templates.items():
        for layer in range(cfg.n_layers if "{}" in src else 1):
            names = tuple(d.format(layer) for d in dst) if isinstance(dst, tuple) else dst.format(layer)
            table[src.format(layer)] = (names, conversion)
    return table


def listed(names: list[str], limit: int = 5) -> str:
    """The first `limit` names, comma-separated, for an error message."""
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def convert_state_dict(weights: dict[str, Tensor], family: Family, cfg: ModelConfig,
                       source: str) -> dict[str, Tensor]:
    """Hugging Face weights -> float32 tensors in our layout; every weight must be used, none missing."""
    weights = _strip_base_prefix(weights, family.base_prefix, source)
    weights = _drop_known_extras(weights, family, cfg.n_layers)
    weights, unembed = _take_unembedding(weights, family, cfg, source)
    state_dict = {name: tensor.float().contiguous() for name, tensor in unembed.items()}
    table = _key_table(family, cfg)
    unused = sorted(set(weights) - set(table))
    if unused:
        raise ModelFormatError(f"{source}: weights headscope does not use: {listed(unused)}")
    missing = sorted(set(table) - set(weights))
    if missing:
        raise ModelFormatError(f"{source}: missing weights: {listed(missing)}")
    for src, (dst, conversion) in table.items():
        try:
            converted = conversion(weights[src].float(), cfg)
        except RuntimeError as err:
            raise ModelFormatError(f"{source}: weight {src} of shape {tuple(weights[src].shape)} does not fit "
                                   f"the config: {err}") from err
        pairs = zip(dst, converted) if isinstance(dst, tuple) else [(dst, converted)]
        state_dict |= {name: tensor.contiguous() for name, tensor in pairs}
    return state_dict
