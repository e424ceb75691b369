"""Load a llama.cpp GGUF file (architectures `llama`, e.g. SmolLM2, and qwen2, qwen3, gemma2, gemma3,
phi3) into headscope's weight layout.

A GGUF holds the model's config and tokenizer as metadata and its weights as (possibly quantized)
tensors. This module reads all three with the `gguf` package, dequantizes to float32, undoes
llama.cpp's Q/K row permutation (llama only: the other architectures use NeoX-style RoPE, which
convert_hf_to_gguf.py leaves unpermuted) and reshapes to the per-head layout of docs/design.md. The
extra families follow llama.cpp's conventions: Gemma norms already hold 1 + w, Phi-3 keeps its fused
`attn_qkv` and `ffn_up` (gate rows first), sliding windows come from `attention.sliding_window` and
`attention.sliding_window_pattern` (llama.cpp's defaults when absent: every 2nd layer global for
gemma2, every 6th for gemma3, all local for phi3). Anything it does not understand (another
architecture, RoPE scaling, a quantization type, a tensor no table names) is an error, never silently
ignored. Tokenizers are rebuilt with `tokenizers`: byte-level BPE (`tokenizer.ggml.model` "gpt2") here,
SentencePiece vocabularies ("llama": Gemma, Phi-3) in gguf_sentencepiece.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, pre_tokenizers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.decoders import ByteLevel as ByteLevelDecoder
from tokenizers.models import BPE

from headscope.errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from headscope.loading import LoadedModel
from headscope.loading.gguf_families import ARCH_KEYS, family_options, split_fused, tensor_names
from headscope.loading.gguf_sentencepiece import sentencepiece_backend
from headscope.model.config import ModelConfig
from headscope.model.tokenizer import Tokenizer

_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
SUPPORTED_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
}

# Metadata keys read for a llama model; `{}` is the architecture prefix.
_REQUIRED_KEYS = {
    "n_layers": "{}.block_count",
    "n_heads": "{}.attention.head_count",
    "d_model": "{}.embedding_length",
    "d_mlp": "{}.feed_forward_length",
    "n_ctx": "{}.context_length",
    "norm_eps": "{}.attention.layer_norm_rms_epsilon",
}
_OPTIONAL_KEYS = {
    "n_kv_heads": "{}.attention.head_count_kv",
    "rotary_base": "{}.rope.freq_base",
    "key_length": "{}.attention.key_length",
    "value_length": "{}.attention.value_length",
    "rope_dims": "{}.rope.dimension_count",
    "vocab_size": "{}.vocab_size",
}
# llama.cpp token types (gguf.TokenType): CONTROL tokens are special, USER_DEFINED ones are
# matched whole in text but not special.
_CONTROL, _USER_DEFINED = 3, 4

# What `tokenizer.ggml.pre` implies before byte-level BPE. llama.cpp's `llama-vocab.cpp` lists the
# regexes per pre-tokenizer type: "gpt2" is GPT-2's regex alone; "smollm" (like "starcoder") first
# isolates every digit (`\p{N}`), which is Hugging Face's `Digits(individual_digits=True)`.
# "qwen2" (Qwen2/2.5/3) is one regex before byte-level BPE: digits one by one, letters with at most one
# leading non-letter, contractions in any case; Qwen2's tokenizer.json writes the same Split.
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "qwen2": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]),
    "smollm": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]),
}


def load_gguf(path: str | Path) -> LoadedModel:
    """Read a GGUF file into a `LoadedModel`: config, float32 weights in our layout, tokenizer."""
    path = Path(path)
    reader = _open(path)
    metadata = _metadata(reader, path)
    architecture = metadata.get("general.architecture")
    if architecture is None:
        raise ModelFormatError(f"{path}: no general.architecture in the GGUF metadata")
    if architecture not in _ARCHITECTURES:
        raise UnsupportedModelError(f"{path}: GGUF architecture {architecture!r} is not supported; headscope reads "
                                    f"{', '.join(sorted(_ARCHITECTURES))} GGUF files")
    tensors = {t.name: t for t in reader.tensors}
    config = _llama_config(metadata, tensors, path, architecture)
    state_dict = _state_dict(tensors, config, path, architecture)
    return LoadedModel(
        config=config,
        state_dict=state_dict,
        tokenizer=_tokenizer(metadata, config.d_vocab, path, architecture),
        source=str(path),
        meta={key: metadata[key] for key in ("general.name", "tokenizer.ggml.add_bos_token") if key in metadata},
    )


# ----- reading the file ---------------------------------------------------------------------------
def _open(path: Path) -> GGUFReader:
    """Parse the header; a truncated or foreign file fails here or on first tensor access."""
    if not path.is_file():
        raise ModelNotFoundError(f"no GGUF file at {path}")
    try:
        return GGUFReader(path)
    except (ValueError, struct.error, IndexError, KeyError, UnicodeDecodeError, OSError) as err:
        raise ModelFormatError(f"{path} is not a readable GGUF file (truncated or another format): {err}") from err


def _metadata(reader: GGUFReader, path: Path) -> dict[str, Any]:
    """Every key/value pair as a Python value (strings decoded, arrays as lists)."""
    try:
        return {name: field.contents() for name, field in reader.fields.items()}
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise ModelFormatError(f"{path}: unreadable GGUF metadata: {err}") from err


# ----- config -------------------------------------------------------------------------------------
def _llama_config(metadata: dict[str, Any], tensors: dict[str, ReaderTensor], path: Path,
                  arch: str = "llama") -> ModelConfig:
    """Map llama-like metadata to a ModelConfig, refusing settings the model does not implement."""
    _refuse_unknown_keys(metadata, arch, path)
    missing = [key.format(arch) for key in _REQUIRED_KEYS.values() if key.format(arch) not in metadata]
    if missing:
        raise ModelFormatError(f"{path}: GGUF metadata lacks {', '.join(missing)}")
    if "token_embd.weight" not in tensors:
        raise ModelFormatError(f"{path}: no token_embd.weight tensor")
    value = {name: metadata[key.format(arch)] for name, key in _REQUIRED_KEYS.items()}
    value |= {name: metadata.get(key.format(arch)) for name, key in _OPTIONAL_KEYS.items()}  # None if absent
    d_head = value["key_length"] or value["d_model"] // value["n_heads"]
    _check_head_sizes(value, d_head, path)
    d_vocab = int(tensors["token_embd.weight"].shape[1])  # ggml shape is (d_model, d_vocab)
    if value["vocab_size"] not in (None, d_vocab):
        raise ModelFormatError(f"{path}: {arch}.vocab_size {value['vocab_size']} != token_embd rows {d_vocab}")
    try:
        fields = dict(
            architecture=arch, d_model=value["d_model"], n_layers=value["n_layers"], n_heads=value["n_heads"],
            n_kv_heads=value["n_kv_heads"], d_head=d_head, d_vocab=d_vocab, n_ctx=value["n_ctx"],
            d_mlp=value["d_mlp"], act_fn="silu", gated_mlp=True, norm="rmsnorm", norm_eps=float(value["norm_eps"]),
            positional="rotary", rotary_base=float(value["rotary_base"] or 10000.0),
            tie_embeddings="output.weight" not in tensors, has_unembed=True,
        )
        return ModelConfig(**fields | family_options(arch, value, metadata, path))
    except ValueError as err:
        raise ModelFormatError(f"{path}: inconsistent GGUF config: {err}") from err


def _refuse_unknown_keys(metadata: dict[str, Any], arch: str, path: Path) -> None:
    """Every `llama.*` key is one we read; any other (RoPE scaling, experts, ...) changes the model."""
    known = {key.format(arch) for key in (*_REQUIRED_KEYS.values(), *_OPTIONAL_KEYS.values(),
                                          *ARCH_KEYS.get(arch, {}).values())}
    for key, value in metadata.items():
        if key.startswith(f"{arch}.") and key not in known:
            raise UnsupportedModelError(f"{path}: GGUF setting {key} = {value!r} is not supported "
                                        "(RoPE scaling, experts and sliding windows are not implemented)")


def _check_head_sizes(value: dict[str, Any], d_head: int, path: Path) -> None:
    """Keys, values and the rotated part must all span the whole head, as in plain llama."""
    if value["value_length"] not in (None, d_head):
        raise UnsupportedModelError(f"{path}: value head size {value['value_length']} != key head size {d_head}")
    if value["rope_dims"] not in (None, d_head):
        raise UnsupportedModelError(f"{path}: partial RoPE ({value['rope_dims']} of {d_head} dims) is not "
                                    "supported for llama GGUF files")


# ----- weights ------------------------------------------------------------------------------------
def _state_dict(tensors: dict[str, ReaderTensor], config: ModelConfig, path: Path,
                arch: str = "llama") -> dict[str, torch.Tensor]:
    """Dequantize and convert every tensor; a tensor no table names, or one missing, is an error."""
    names = tensor_names(config, arch)
    unused = sorted(set(tensors) - set(names))
    if unused:
        raise ModelFormatError(f"{path}: GGUF tensors headscope does not use: {', '.join(unused[:5])}")
    missing = sorted(set(names) - set(tensors) - {"output.weight"})
    if missing:
        raise ModelFormatError(f"{path}: GGUF tensors missing: {', '.join(missing[:5])}")
    state_dict = {}
    for gguf_name, tensor in tensors.items():
        ours = names[gguf_name]
        weight = _dequantize(tensor, path)
        try:
            if isinstance(ours, tuple):  # Phi-3's fused tensors
                state_dict |= split_fused(ours, weight, config)
            elif arch != "llama" and ours.rsplit(".", 1)[-1] in ("W_Q", "W_K"):  # NeoX RoPE: rows as in HF
                heads = config.n_heads if ours.endswith("W_Q") else config.kv_heads
                state_dict[ours] = _per_head_in(weight, heads, config.d_head)
            else:
                state_dict[ours] = _CONVERSIONS[ours.rsplit(".", 1)[-1]](weight, config)
        except RuntimeError as err:
            raise ModelFormatError(f"{path}: tensor {gguf_name} of shape {tuple(weight.shape)} does not fit "
                                   f"the config: {err}") from err
    return state_dict


def _dequantize(tensor: ReaderTensor, path: Path) -> torch.Tensor:
    """A float32 copy in numpy/PyTorch order ([rows, cols], the reverse of ggml's shape)."""
    qtype = GGMLQuantizationType(tensor.tensor_type)
    if qtype not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise UnsupportedModelError(f"{path}: tensor {tensor.name} has type {qtype.name}; headscope dequantizes "
                                    f"{supported}")
    try:
        values = dequantize(tensor.data, qtype)
    except (ValueError, IndexError) as err:
        raise ModelFormatError(f"{path}: tensor {tensor.name} is corrupt or truncated: {err}") from err
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order so RoPE rotates (i, i + d/2) pairs, as Hugging Face's Llama does.

    llama.cpp's converter (`LlamaModel.permute` in convert_hf_to_gguf.py) interleaves each head's
    rows for its pairwise RoPE; transformers undoes it in `modeling_gguf_pytorch_utils.py`
    (`LlamaTensorProcessor._reverse_permute_weights`). `n_heads` is the key/value head count for K.
    """
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(weight.shape)


def _per_head_in(weight: torch.Tensor, n_heads: int, d_head: int) -> torch.Tensor:
    """[n_heads * d_head, d_model] linear weight -> [n_heads, d_model, d_head]."""
    return weight.view(n_heads, d_head, -1).transpose(1, 2).contiguous()


# Our weight's last name part -> conversion from the dequantized [rows, cols] tensor.
_CONVERSIONS: dict[str, Callable[[torch.Tensor, ModelConfig], torch.Tensor]] = {
    "W_E": lambda w, cfg: w,
    "w": lambda w, cfg: w,
    "W_U": lambda w, cfg: w.T.contiguous(),
    "W_Q": lambda w, cfg: _per_head_in(unpermute_rope_rows(w, cfg.n_heads), cfg.n_heads, cfg.d_head),
    "W_K": lambda w, cfg: _per_head_in(unpermute_rope_rows(w, cfg.kv_heads), cfg.kv_heads, cfg.d_head),
    "W_V": lambda w, cfg: _per_head_in(w, cfg.kv_heads, cfg.d_head),
    "W_O": lambda w, cfg: w.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model).contiguous(),  # [D, H*d] -> [H, d, D]
    "W_in": lambda w, cfg: w.T.contiguous(),  # [M, D] -> [D, M]
    "W_gate": lambda w, cfg: w.T.contiguous(),
    "W_out": lambda w, cfg: w.T.contiguous(),  # [D, M] -> [M, D]
    "b_Q": lambda b, cfg: b.reshape(cfg.n_heads, cfg.d_head),
    "b_K": lambda b, cfg: b.reshape(cfg.kv_heads, cfg.d_head),
    "b_V": lambda b, cfg: b.reshape(cfg.kv_heads, cfg.d_head),
}


# ----- tokenizer ----------------------------------------------------------------------------------
def _tokenizer(metadata: dict[str, Any], d_vocab: int, path: Path, arch: str) -> Tokenizer | None:
    """Byte-level BPE ('gpt2') or SentencePiece ('llama') rebuilt from `tokenizer.ggml.*`; None when the
    file carries no tokenizer."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind is None:
        return None
    if kind not in ("gpt2", "llama"):
        raise UnsupportedModelError(f"{path}: GGUF tokenizer {kind!r} is not supported; headscope rebuilds "
                                    "byte-level BPE ('gpt2') and SentencePiece ('llama') tokenizers")
    if "tokenizer.ggml.tokens" not in metadata:
        raise ModelFormatError(f"{path}: tokenizer.ggml.model is {kind!r} but there is no tokenizer.ggml.tokens")
    tokens = metadata["tokenizer.ggml.tokens"]
    if len(tokens) > d_vocab:
        raise ModelFormatError(f"{path}: {len(tokens)} tokens but an embedding of only {d_vocab} rows")
    if kind == "llama":
        backend, tokens, token_types = sentencepiece_backend(metadata, arch, path)
    else:
        backend = _byte_level_backend(metadata, tokens, path)
        token_types = metadata.get("tokenizer.ggml.token_type", [])
    _add_whole_tokens(backend, tokens, token_types)
    return Tokenizer(
        backend,
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=metadata.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=metadata.get("tokenizer.ggml.padding_token_id"),
    )


def _byte_level_backend(metadata: dict[str, Any], tokens: list[str], path: Path) -> RustTokenizer:
    """GPT-2-style BPE over bytes spelled as characters, with the file's merges and pre-tokenizer."""
    if metadata.get("tokenizer.ggml.add_space_prefix"):
        raise UnsupportedModelError(f"{path}: tokenizer.ggml.add_space_prefix is not supported for byte-level BPE")
    backend = RustTokenizer(BPE(
        vocab={token: index for index, token in enumerate(tokens)},
        merges=_merges(metadata.get("tokenizer.ggml.merges", []), path),
        continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
    ))
    # Files older than the `pre` key get GPT-2's split, as transformers gives them.
    backend.pre_tokenizer = _pre_tokenizer(metadata.get("tokenizer.ggml.pre", "gpt2"), path)
    backend.decoder = ByteLevelDecoder()
    return backend


def _merges(merges: list[str], path: Path) -> list[tuple[str, str]]:
    """GGUF writes each merge as "left right"; byte-level tokens never hold a literal space."""
    pairs = [tuple(merge.split(" ")) for merge in merges]
    bad = [merge for merge, pair in zip(merges, pairs) if len(pair) != 2]
    if bad:
        raise ModelFormatError(f"{path}: malformed tokenizer merge {bad[0]!r}")
    return pairs


def _pre_tokenizer(name: str, path: Path) -> pre_tokenizers.PreTokenizer:
    if name not in _PRE_TOKENIZERS:
        raise UnsupportedModelError(f"{path}: GGUF pre-tokenizer {name!r} is not supported "
                                    f"(supported: {', '.join(sorted(_PRE_TOKENIZERS))})")
    return _PRE_TOKENIZERS[name]()


def _add_whole_tokens(backend: RustTokenizer, tokens: list[str], token_types: list[int]) -> None:
    """Control tokens (`<|im_start|>`) become special and user-defined ones plain added tokens, so both
    are matched whole in text instead of being cut by BPE, as llama.cpp does. Their ids do not change."""
    special = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, token_types) if kind == _CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED]
    if special:
        backend.add_special_tokens(special)
    if user:
        backend.add_tokens(user)
