"""Multi-head attention with grouped key/value heads, optional rotary positions, two equal paths.

The explicit path computes scores, softmax and the pattern, and exposes them at `hook_attn_scores` and
`hook_pattern`. The fused path calls PyTorch's `scaled_dot_product_attention` and never forms the
pattern; it is taken whenever nothing hooks the scores or the pattern. Tests hold the two equal.
Config options add QK-norm, local windows (through the mask), soft-capped scores (explicit path only:
no fused kernel caps) and learned sink logits (an extra key of zero value on the fused path).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from headscope.model.config import ModelConfig
from headscope.model.hooks import HookPoint


class Rotary(nn.Module):
    """RoPE in the "rotate half" convention of Hugging Face Llama and GPT-NeoX, on the first `dims` dims."""

    def __init__(self, dims: int, base: float) -> None:
        super().__init__()
        self.dims = dims
        self.base = base

    def cos_sin(self, n_pos: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every position's angles, (pos, dims), in float32."""
        # This exact formula in float32, as in transformers, so the angles match bit for bit.
        exponents = torch.arange(0, self.dims, 2, dtype=torch.int64, device=device).float() / self.dims
        inv_freq = 1.0 / (self.base**exponents)
        positions = torch.arange(n_pos, device=device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)  # (pos, dims/2)
        angles = torch.cat((angles, angles), dim=-1)  # (pos, dims)
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x of shape (batch, pos, head, d_head)."""
        rot, rest = x[..., : self.dims], x[..., self.dims :]
        half = self.dims // 2
        rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # (pos, 1, dims)
        return torch.cat((rot * cos + rotated_half * sin, rest), dim=-1)


def allowed_keys(queries: torch.Tensor, n_key: int, causal: bool, window: int | None) -> torch.Tensor:
    """(query, key) booleans: may the query at each position of `queries` attend to each of the first `n_key`
    keys? Causal attention stops at the query; a `window` of N keeps the N latest keys (key > query - N), as
    transformers' sliding-window masks do."""
    keys = torch.arange(n_key, device=queries.device)[None, :]
    allowed = torch.ones(len(queries), n_key, dtype=torch.bool, device=queries.device)
    if causal:
        allowed &= keys <= queries[:, None]
    if window is not None:
        allowed &= keys > queries[:, None] - window
    return allowed


def attention_bias(
    n_query: int, n_key: int, causal: bool, key_mask: torch.Tensor | None, dtype: torch.dtype, device: torch.device,
    window: int | None = None,
) -> torch.Tensor | None:
    """Additive mask (batch or 1, 1, query, key): 0 where attention is allowed, the dtype's minimum elsewhere.

    The queries are the last `n_query` positions. The minimum rather than -inf keeps a row with no allowed
    key (a padding query) finite. None when there is no padding and no window: the causal mask (if any) is
    then applied by each path itself, and the fused kernel takes its faster `is_causal` route.
    """
    if key_mask is None and window is None:
        return None
    queries = torch.arange(n_key - n_query, n_key, device=device)
    allowed = allowed_keys(queries, n_key, causal, window)[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask.bool()[:, None, None, :]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


class QKNorm(nn.Module):
    """RMSNorm of queries or keys (batch, pos, head, d_head): over each head ("head", Qwen3 and Gemma 3,
    weight [d_head]) or over all heads at once ("all", OLMo 2, weight [heads * d_head]).

    In float32, weight applied last, as transformers' RMSNorms do.
    """

    def __init__(self, mode: str, n_heads: int, d_head: int, eps: float) -> None:
        super().__init__()
        self.mode = mode
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_head if mode == "head" else n_heads * d_head))
        self.hook_scale = HookPoint()  # (batch, pos, head or 1, 1)
        self.hook_normalized = HookPoint()  # (batch, pos, head, d_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, shape = x.dtype, x.shape
        x = x.float() if self.mode == "head" else x.float().flatten(2)[:, :, None]  # (b, p, 1, H*d) for "all"
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized((self.w * (x / scale).to(dtype)).reshape(shape))


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads; hook points named as TransformerLens names them."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.window = cfg.window(layer)  # None for global attention
        H, K, D, d = cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(H, D, d))
        self.W_K = nn.Parameter(torch.empty(K, D, d))
        self.W_V = nn.Parameter(torch.empty(K, D, d))
        self.W_O = nn.Parameter(torch.empty(H, d, D))
        if cfg.attn_bias:
            self.b_Q = nn.Parameter(torch.zeros(H, d))
            self.b_K = nn.Parameter(torch.zeros(K, d))
            self.b_V = nn.Parameter(torch.zeros(K, d))
        if cfg.attn_out_bias:
            self.b_O = nn.Parameter(torch.zeros(D))
        base = cfg.local_rotary_base if self.window is not None and cfg.local_rotary_base else cfg.rotary_base
        self.rotary = Rotary(cfg.rotary_dims, base) if cfg.positional == "rotary" else None
        if cfg.qk_norm != "none":
            self.q_norm = QKNorm(cfg.qk_norm, H, d, cfg.norm_eps)
            self.k_norm = QKNorm(cfg.qk_norm, K, d, cfg.norm_eps)
        if cfg.attn_sinks:
            self.sinks = nn.Parameter(torch.zeros(H))  # one logit per query head
        self.force_explicit = False  # set by HookedTransformer to compare the two paths
        # An optional replacement for the fused path, `kernel(attn, q, k, v, bias) -> z`: the capture engine
        # installs one that also returns per-head statistics from the same fused call.
        self.kernel: Callable[..., torch.Tensor] | None = None

        self.hook_q = HookPoint()  # (batch, pos, head, d_head)
        self.hook_k = HookPoint()  # (batch, pos, kv_head, d_head)
        self.hook_v = HookPoint()  # (batch, pos, kv_head, d_head)
        if self.rotary is not None:
            self.hook_rot_q = HookPoint()  # (batch, pos, head, d_head), after RoPE
            self.hook_rot_k = HookPoint()  # (batch, pos, kv_head, d_head), after RoPE
        self.hook_attn_scores = HookPoint()  # (batch, head, query_pos, key_pos), scaled and masked
        self.hook_pattern = HookPoint()  # (batch, head, query_pos, key_pos), rows sum to 1 (1 - sink with sinks)
        if cfg.attn_sinks:
            self.hook_sink = HookPoint()  # (batch, head, query_pos), the mass the sink logit took
        self.hook_z = HookPoint()  # (batch, pos, head, d_head)
        self.hook_result = HookPoint()  # (batch, pos, head, d_model), only formed when hooked

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.cfg.n_heads // self.cfg.kv_heads

    def project_qkv(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None):
        """Per-head queries, keys and values of x (batch, pos, d_model), after RoPE when the model has it."""
        q = torch.einsum("bpm,hmd->bphd", x, self.W_Q)
        k = torch.einsum("bpm,hmd->bphd", x, self.W_K)
        v = torch.einsum("bpm,hmd->bphd", x, self.W_V)
        if self.cfg.attn_bias:
            q, k, v = q + self.b_Q, k + self.b_K, v + self.b_V
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.cfg.qk_norm != "none":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            cos, sin = rotary
            q = self.hook_rot_q(self.rotary(q, cos, sin))
            k = self.hook_rot_k(self.rotary(k, cos, sin))
        return q, k, v

    def needs_pattern(self) -> bool:
        """True when the explicit path must run: forced, a hook reads the scores or the pattern, or the
        scores are soft-capped (which no fused kernel does)."""
        hooked = self.hook_attn_scores.active or self.hook_pattern.active
        return self.force_explicit or hooked or self.cfg.attn_softcap is not None

    def cap(self, scores: torch.Tensor) -> torch.Tensor:
        """Scaled scores after soft-capping (c tanh(s / c), Gemma 2), which comes before the mask."""
        if self.cfg.attn_softcap is None:
            return scores
        return self.cfg.attn_softcap * torch.tanh(scores / self.cfg.attn_softcap)

    def softmax(self, scores: torch.Tensor, head: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pattern of capped, masked scores (..., head, query, key), or of one `head`'s (..., query, key),
        and the mass its learned sink logit took (..., [head,] query), None without sinks. Computed in
        float32, returned in the scores' dtype. Every path that rebuilds a pattern from q and k goes through
        here, so none of them can forget the sink column."""
        if not self.cfg.attn_sinks:
            return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype), None
        sinks = self.sinks[:, None] if head is None else self.sinks[head]  # against (..., head, query)
        column = sinks.to(scores.dtype).expand(*scores.shape[:-1])[..., None]
        probs = torch.softmax(torch.cat((scores, column), dim=-1), dim=-1, dtype=torch.float32).to(scores.dtype)
        return probs[..., :-1], probs[..., -1]

    def pattern_rows(self, q: torch.Tensor, k: torch.Tensor, queries: torch.Tensor,
                     key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, head, len(queries), key): the pattern rows of the queries q (batch, len(queries), head,
        d_head) standing at positions `queries`, against the keys k (batch, key, kv_head, d_head), both as the
        scores read them (after QK-norm and RoPE), made as the explicit path makes them: soft-capping, causal
        and window masks, padding keys (key_mask (batch, key), 0 on padding), the sink column. A few rows at
        a time, this is the pattern without its (query, key) whole."""
        group = q.unflatten(2, (k.shape[2], self.group_size))  # query head h reads key/value head h // size
        scores = self.cap(torch.einsum("bqkgd,bskd->bkgqs", group, k).flatten(1, 2) * self.cfg.scale)
        allowed = allowed_keys(queries, k.shape[1], self.cfg.causal, self.window)[None, None]
        if key_mask is not None:
            allowed = allowed & key_mask.bool()[:, None, None, :]
        return self.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min))[0]

    def explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Scores, softmax, pattern, z; the readable reference path."""
        k = k.repeat_interleave(self.group_size, dim=2)  # (batch, pos, head, d_head)
        v = v.repeat_interleave(self.group_size, dim=2)
        scores = self.cap(torch.einsum("bqhd,bkhd->bhqk", q, k) * self.cfg.scale)
        if bias is not None:
            # Clamped: in float16 the bias' minimum plus a negative score is -inf, and a row of them NaN.
            scores = (scores + bias).clamp_min(torch.finfo(scores.dtype).min)
        elif self.cfg.causal:
            n_q, n_k = scores.shape[-2:]
            causal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
            scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        pattern, sink = self.softmax(self.hook_attn_scores(scores))
        if sink is not None:
            self.hook_sink(sink)
        pattern = self.hook_pattern(pattern)
        return torch.einsum("bhqk,bkhd->bqhd", pattern, v)

    def fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The same attention through PyTorch's fused kernel; the pattern is never formed."""
        if self.cfg.attn_sinks:
            return self._fused_with_sinks(q, k, v, bias)
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=bias,
            is_causal=bias is None and self.cfg.causal,
            scale=self.cfg.scale,
            enable_gqa=self.group_size > 1,
        )  # (batch, head, pos, d_head)
        return z.transpose(1, 2)

    def _fused_with_sinks(self, q, k, v, bias):
        """Sinks as one extra key: q gains a column of ones, k a column that is sink / scale for the extra
        key and 0 for the others, so the extra score is the sink logit and the rest are unchanged; its
        value is zero, so it takes mass and adds nothing."""
        batch, n_q, n_heads, d = q.shape
        n_k = k.shape[1]
        k = k.repeat_interleave(self.group_size, dim=2)  # sinks differ per query head
        v = v.repeat_interleave(self.group_size, dim=2)
        sink_key = F.pad((self.sinks / self.cfg.scale).to(q.dtype)[:, None], (d, 0)).expand(batch, 1, n_heads, d + 1)
        q = torch.cat((q, q.new_ones(batch, n_q, n_heads, 1)), dim=-1)
        k = torch.cat((F.pad(k, (0, 1)), sink_key), dim=1)
        v = torch.cat((v, v.new_zeros(batch, 1, n_heads, d)), dim=1)
        if bias is None:
            bias = attention_bias(n_q, n_k, self.cfg.causal, torch.ones(1, n_k, device=q.device), q.dtype, q.device)
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=F.pad(bias, (0, 1)),
            scale=self.cfg.scale,
        )
        return z.transpose(1, 2)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """x: (batch, pos, d_model) already normalised; bias from `attention_bias`."""
        q, k, v = self.project_qkv(x, rotary)
        if self.needs_pattern():
            z = self.explicit(q, k, v, bias)
        elif self.kernel is not None:
            z = self.kernel(self, q, k, v, bias)
        else:
            z = self.fused(q, k, v, bias)
        z = self.hook_z(z)
        if self.hook_result.active:
            result = self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O))
            out = result.sum(dim=2)
        else:
            out = z.flatten(2) @ self.W_O.flatten(0, 1)  # (batch, pos, head*d_head) @ (head*d_head, d_model)
        return out + self.b_O if self.cfg.attn_out_bias else out
