"""One frozen configuration for every architecture headscope builds.

Architectures differ only by these fields: the model code reads the fields, never the architecture's
name. The relations between fields are checked once, in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

Norm = Literal["layernorm", "rmsnorm", "none"]
Positional = Literal["learned", "rotary", "none"]
Activation = Literal["gelu_new", "gelu", "relu", "silu"]
QKNorm = Literal["none", "head", "all"]
BlockNorms = Literal["pre", "sandwich", "output"]
_LITERALS = {"Norm": Norm, "Positional": Positional, "Activation": Activation, "QKNorm": QKNorm,
             "BlockNorms": BlockNorms}


@dataclass(frozen=True)
class ModelConfig:
    """Shape and settings of one transformer; every architecture is a choice of these fields."""

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int  # longest sequence the model accepts
    architecture: str = "custom"  # a label for humans (gpt2, llama, bert, neox, attn-only); code never branches on it
    n_kv_heads: int | None = None  # grouped-query attention: None means n_heads
    d_mlp: int = 0  # 0 means no MLP (attention-only models)
    act_fn: Activation = "gelu_new"
    gated_mlp: bool = False  # SwiGLU: act(x W_gate) * (x W_in), Llama style
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    post_norm: bool = False  # BERT: x = norm(x + sublayer(x)) instead of x + sublayer(norm(x))
    final_norm: bool = True  # ln_final before the unembedding (absent in BERT encoders)
    embed_norm: bool = False  # BERT: a LayerNorm over the summed embeddings
    positional: Positional = "learned"
    rotary_dim: int | None = None  # partial rotary (GPT-NeoX): rotate only the first rotary_dim dims of a head
    rotary_base: float = 10000.0
    parallel_attn_mlp: bool = False  # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x))
    causal: bool = True  # False for encoders (bidirectional attention)
    n_token_types: int = 0  # BERT segment embeddings
    attn_bias: bool = False  # biases on Q, K, V
    attn_out_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False
    has_unembed: bool = True  # False for encoders: forward returns the last hidden state
    tie_embeddings: bool = False  # unembedding is the transposed token embedding
    unembed_bias: bool = False
    attn_scale: float | None = None  # None means 1 / sqrt(d_head)
    # Options of the families of issue 19 (docs/design.md, "The weight layout", says which weights each adds).
    qk_norm: QKNorm = "none"  # RMSNorm on q and k before RoPE: per head (Qwen3, Gemma 3) or over all heads (OLMo 2)
    windows: tuple[int | None, ...] = ()  # per layer: a local window of N keys (self included), None = global
    local_rotary_base: float | None = None  # RoPE base of the layers with a window (Gemma 3); None = rotary_base
    attn_softcap: float | None = None  # Gemma 2: scores become cap * tanh(scores / cap) before the mask
    final_softcap: float | None = None  # Gemma 2: the same on the logits
    block_norms: BlockNorms = "pre"  # norms before each sublayer, before and after (Gemma), or after only (OLMo 2)
    embed_scale: float | None = None  # Gemma: embeddings times sqrt(d_model), rounded to the model's dtype
    attn_sinks: bool = False  # GPT-OSS: a learned logit per head, a softmax column that takes mass and adds no value

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("d_model", "n_layers", "n_heads", "d_head", "d_vocab", "n_ctx"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if self.positional == "rotary" and (self.rotary_dims % 2 or self.rotary_dims > self.d_head):
            raise ValueError(f"rotary_dim ({self.rotary_dims}) must be even and at most d_head ({self.d_head})")
        if self.gated_mlp and not self.d_mlp:
            raise ValueError("gated_mlp needs d_mlp > 0")
        if self.tie_embeddings and not self.has_unembed:
            raise ValueError("tie_embeddings needs has_unembed")
        self._check_layer_options()

    def _check_layer_options(self) -> None:
        """The issue-19 options: windows as a tuple (JSON gives a list), one per layer, each positive."""
        object.__setattr__(self, "windows", tuple(self.windows))
        if self.windows and len(self.windows) != self.n_layers:
            raise ValueError(f"windows lists {len(self.windows)} layers, the model has {self.n_layers}")
        if any(w is not None and w <= 0 for w in self.windows):
            raise ValueError(f"every window must be positive or None (global), got {list(self.windows)}")
        if (self.windows and not self.causal) or (self.attn_sinks and not self.causal):
            raise ValueError("windows and attention sinks need a causal model")
        if self.block_norms != "pre" and (self.post_norm or self.parallel_attn_mlp):
            raise ValueError(f"block_norms {self.block_norms!r} needs the sequential pre-norm layout")
        for name in ("attn_softcap", "final_softcap"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def window(self, layer: int) -> int | None:
        """The local window of `layer` (keys a query sees, itself included), or None for global attention."""
        return self.windows[layer] if self.windows else None

    def attention_type(self, layer: int) -> str:
        """What `layer`'s heads may attend to, in words: "global", "local window N", either with ", sinks"
        (and ", bidirectional" for encoders)."""
        window = self.window(layer)
        kind = "global" if window is None else f"local window {window}"
        return kind + (", sinks" if self.attn_sinks else "") + ("" if self.causal else ", bidirectional")

    def _check_types(self) -> None:
        """Every field of the type it is declared with (a config file can hold 4.5, null or "2" anywhere)."""
        for item in fields(self):
            value, declared = getattr(self, item.name), str(item.type)
            if value is None and "None" in declared:
                continue
            if declared.startswith("int"):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif declared.startswith("float"):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            elif declared == "bool":
                ok = isinstance(value, bool)
            elif declared.startswith("tuple"):  # windows: a layer's window or None
                ok = isinstance(value, (list, tuple)) and all(
                    v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value)
            else:  # str and the Literal names
                ok = isinstance(value, str)
                options = get_args(_LITERALS.get(declared))
                if ok and options and value not in options:
                    raise ValueError(f"{item.name} must be one of {', '.join(options)}, got {value!r}")
            if not ok:
                raise ValueError(f"{item.name} must be of type {declared.replace('float', 'finite float')}, "
                                 f"got {value!r}")

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equal to n_heads without grouped-query attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def rotary_dims(self) -> int:
        """Number of dimensions of each head that RoPE rotates."""
        return self.rotary_dim or self.d_head

    @property
    def scale(self) -> float:
        """Factor on q . k before the softmax."""
        return self.attn_scale if self.attn_scale is not None else self.d_head**-0.5

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The fields as indented JSON (what checkpoints store as config.json)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict, refusing keys this version does not know (they would be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**data)
