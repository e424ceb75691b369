"""Norms, the MLP, and the transformer block that wires them around attention.

Three residual layouts, chosen by config fields: pre-norm (GPT-2, Llama), post-norm (BERT) and
parallel attention + MLP (GPT-NeoX). Attention-only models simply have no MLP. In the pre-norm layout
`block_norms` adds norms on each sublayer's output (`ln1_post`, `ln2_post`: Gemma's sandwich) or keeps
only those (OLMo 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headscope.model.attention import Attention
from headscope.model.config import ModelConfig
from headscope.model.hooks import HookPoint

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "gelu": F.gelu,  # exact erf form (BERT)
    "relu": F.relu,
    "silu": F.silu,
}


class LayerNorm(nn.Module):
    """LayerNorm with weight `w` and bias `b`; its scale and output are hook points."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # (batch, pos, 1)
        self.hook_normalized = HookPoint()  # (batch, pos, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / sqrt(var + eps) * w + b over the last axis."""
        # In float32, cast back before the weights (as RMSNorm): in float16 x.pow(2) overflows once |x| >= 256.
        dtype = x.dtype
        x = x.float()
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized((x / scale).to(dtype) * self.w + self.b)


class RMSNorm(nn.Module):
    """RMSNorm with weight `w` (Llama); its scale and output are hook points."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()  # (batch, pos, 1)
        self.hook_normalized = HookPoint()  # (batch, pos, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x / sqrt(mean(x^2) + eps) * w over the last axis."""
        # In float32 and weight applied last, as Llama does, so half precision matches transformers.
        dtype = x.dtype
        x = x.float()
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(self.w * (x / scale).to(dtype))


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The config's norm, or an identity for models without one."""
    norms = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}
    return norms[cfg.norm](cfg.d_model, cfg.norm_eps) if cfg.norm in norms else nn.Identity()


class MLP(nn.Module):
    """act(x W_in) W_out, or with `gated_mlp` act(x W_gate) * (x W_in) W_out (SwiGLU)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.act = ACTIVATIONS[cfg.act_fn]
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        if cfg.gated_mlp:
            self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
            self.hook_pre_linear = HookPoint()  # (batch, pos, d_mlp), x W_in
        if cfg.mlp_bias:
            self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
            self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()  # (batch, pos, d_mlp), before the activation
        self.hook_post = HookPoint()  # (batch, pos, d_mlp), after it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, pos, d_model) -> (batch, pos, d_model)."""
        linear = x @ self.W_in + self.b_in if self.cfg.mlp_bias else x @ self.W_in
        if self.cfg.gated_mlp:
            post = self.act(self.hook_pre(x @ self.W_gate)) * self.hook_pre_linear(linear)
        else:
            post = self.act(self.hook_pre(linear))
        out = self.hook_post(post) @ self.W_out
        return out + self.b_out if self.cfg.mlp_bias else out


class TransformerBlock(nn.Module):
    """Attention and MLP around the residual stream, in the layout the config names."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.hook_resid_pre = HookPoint()  # (batch, pos, d_model)
        self.ln1 = make_norm(cfg) if cfg.block_norms != "output" else nn.Identity()
        self.attn = Attention(cfg, layer)
        self.hook_attn_out = HookPoint()  # (batch, pos, d_model)
        self.hook_resid_post = HookPoint()  # (batch, pos, d_model)
        if cfg.d_mlp:
            self.ln2 = make_norm(cfg) if cfg.block_norms != "output" else nn.Identity()
            self.mlp = MLP(cfg)
            self.hook_mlp_out = HookPoint()  # (batch, pos, d_model)
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()  # (batch, pos, d_model), between attention and MLP
        if cfg.block_norms != "pre":  # identities otherwise, so the pre-norm layout serves all three
            self.ln1_post = make_norm(cfg)
            if cfg.d_mlp:
                self.ln2_post = make_norm(cfg)
        else:
            self.ln1_post = self.ln2_post = nn.Identity()
        if cfg.post_norm:
            self.layout = self._post_norm
        elif cfg.parallel_attn_mlp:
            self.layout = self._parallel
        else:
            self.layout = self._pre_norm

    def attention_write_change(self, raw: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """How this block's attention write into the residual stream changes when the heads' summed output
        `raw` (z W_O + b_O, (..., d_model)) changes by `change`: `change` itself, or through the norm on
        attention's output (sandwich / output norms), which is not linear."""
        if isinstance(self.ln1_post, nn.Identity):
            return change
        return self.ln1_post(raw + change) - self.ln1_post(raw)

    def forward(self, resid: torch.Tensor, bias: torch.Tensor | None, rotary) -> torch.Tensor:
        """The residual stream (batch, pos, d_model) after this block."""
        return self.hook_resid_post(self.layout(self.hook_resid_pre(resid), bias, rotary))

    def _pre_norm(self, resid, bias, rotary):
        resid = resid + self.hook_attn_out(self.ln1_post(self.attn(self.ln1(resid), bias, rotary)))
        if not self.cfg.d_mlp:
            return resid
        resid = self.hook_resid_mid(resid)
        return resid + self.hook_mlp_out(self.ln2_post(self.mlp(self.ln2(resid))))

    def _post_norm(self, resid, bias, rotary):
        resid = self.ln1(resid + self.hook_attn_out(self.attn(resid, bias, rotary)))
        if not self.cfg.d_mlp:
            return resid
        resid = self.hook_resid_mid(resid)
        return self.ln2(resid + self.hook_mlp_out(self.mlp(resid)))

    def _parallel(self, resid, bias, rotary):
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), bias, rotary))
        if not self.cfg.d_mlp:
            return resid + attn_out
        return resid + attn_out + self.hook_mlp_out(self.mlp(self.ln2(resid)))
