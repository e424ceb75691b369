"""Whole-row statistics: a per-row quantity of the pattern, defined once for both capture paths.

A `RowStatistic` says how to compute its value for every counted row i of the pattern A:

- `explicit(rows, query_pos)`: from pattern rows A[b, h, i, :] (batch, head, queries, keys) and those
  rows' positions (queries,), a (batch, head, queries) tensor. This is the definition; the explicit
  capture path calls it on the pattern at `hook_pattern`.
- `fused` (optional): the same value without the pattern, as an average sum_j A_ij f(j) of per-key
  columns the fused call attends over (`columns`), turned into the row value by `finish`. A statistic with
  no fused form is computed on the fused path from its rows, rebuilt from the log-sum-exp a chunk of
  queries at a time (never the whole n x n pattern at once), through the same `explicit` function.

The capture engine knows no row statistic by name: what it computes is what the definition says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from headscope.capture.kernels import fused_attention_with_lse

QUERY_CHUNK = 256  # rows rebuilt at once for a row statistic with no fused form: batch x head x chunk x pos


@dataclass(frozen=True)
class FusedContext:
    """What one layer's fused call knows: heads-first q, k (batch, head, pos, d), the additive bias (or None),
    causal, scale, positions (pos,) float32, and after the call the log-sum-exp (batch, head, pos) and the
    mass of the real keys (1.0, or a tensor of that shape with sink logits)."""

    qh: torch.Tensor
    kh: torch.Tensor
    bias: torch.Tensor | None
    causal: bool
    scale: float
    position: torch.Tensor
    lse: torch.Tensor | None = None
    mass: torch.Tensor | float = 1.0

    @property
    def n_pos(self) -> int:
        """Key positions of the batch."""
        return self.qh.shape[2]

    def after_call(self, lse: torch.Tensor, mass: torch.Tensor | float) -> "FusedContext":
        """The same context with the call's log-sum-exp and real-key mass filled in."""
        return replace(self, lse=lse, mass=mass)

    def pattern_rows(self, start: int, stop: int) -> torch.Tensor:
        """A[:, :, start:stop, :] (batch, head, stop - start, pos) as the model's pattern, from the lse."""
        scores = torch.einsum("bhqd,bhkd->bhqk", self.qh[:, :, start:stop].float(), self.kh.float()) * self.scale
        if self.bias is not None:
            scores = scores + self.bias[:, :, start:stop].float()
        elif self.causal:
            allowed = torch.ones(stop - start, self.n_pos, dtype=torch.bool, device=scores.device).tril(start)
            scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
        return (scores - self.lse[:, :, start:stop, None]).exp()


@dataclass(frozen=True)
class FusedRow:
    """The fused form of a row statistic: `columns(ctx)` (batch, head, pos, width) appended to the values,
    and `finish(ctx, attended)` from the attended columns (batch, head, pos, width) to (batch, head, pos)."""

    columns: Callable[[FusedContext], torch.Tensor]
    finish: Callable[[FusedContext, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RowStatistic:
    """A per-row quantity of the pattern: `explicit(rows, query_pos)` defines it, `fused` is an optional
    pattern-free way to the same value (see the module docstring)."""

    explicit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    fused: FusedRow | None = None

    def on_fused_path(self, ctx: FusedContext, attended: torch.Tensor | None) -> torch.Tensor:
        """(batch, head, pos) values on the fused path: `fused.finish`, or `explicit` on rebuilt rows."""
        if self.fused is not None:
            return self.fused.finish(ctx, attended)
        parts = [self.explicit(ctx.pattern_rows(start, min(start + QUERY_CHUNK, ctx.n_pos)),
                               ctx.position[start : start + QUERY_CHUNK])
                 for start in range(0, ctx.n_pos, QUERY_CHUNK)]
        return torch.cat(parts, dim=2)


# ---------------------------------------------------------------------------------------------------------
# entropy: -sum_j A_ij log A_ij, in nats. Fused: with s_ij = scale q_i . k_j and A_ij = exp(s_ij - lse_i)
# (rows summing to `mass` with sink logits), -sum_j A_ij log A_ij = lse_i * mass - scale q_i . sum_j A_ij k_j.


def _entropy_explicit(rows: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(rows, rows).sum(-1)


def _entropy_finish(ctx: FusedContext, attended: torch.Tensor) -> torch.Tensor:
    return ctx.lse * ctx.mass - ctx.scale * (ctx.qh.float() * attended.float()).sum(-1)


ENTROPY = RowStatistic(_entropy_explicit, FusedRow(lambda ctx: ctx.kh, _entropy_finish))


# ---------------------------------------------------------------------------------------------------------
# mean distance: sum_j A_ij |i - j|. Fused: the attended position column gives E[j] = sum_j A_ij j.


def _distance_explicit(rows: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    key_pos = torch.arange(rows.shape[-1], device=rows.device, dtype=torch.float32)
    return (rows * (query_pos[:, None] - key_pos[None, :]).abs()).sum(-1)


def _distance_columns(ctx: FusedContext) -> torch.Tensor:
    batch, heads = ctx.qh.shape[:2]
    return (ctx.position / ctx.n_pos).to(ctx.qh.dtype).expand(batch, heads, ctx.n_pos)[..., None]


def _distance_finish(ctx: FusedContext, attended: torch.Tensor) -> torch.Tensor:
    mean_pos = attended[..., 0].float() * ctx.n_pos
    if ctx.causal:
        return ctx.position * ctx.mass - mean_pos
    return _bidirectional_distance(ctx, mean_pos)


def _bidirectional_distance(ctx: FusedContext, mean_pos: torch.Tensor) -> torch.Tensor:
    """sum_j A_ij |i - j| without the pattern, from a second, causal call.

    The causal call's log-sum-exp gives the mass m_i on keys j <= i (exp(lse_causal - lse)) and its
    output the mass-weighted position p_i there; then sum_j A_ij |i - j| = E[j] - i + 2 (i m_i - p_i).
    """
    qh, kh, n_pos, position = ctx.qh, ctx.kh, ctx.n_pos, ctx.position
    # The minimum of the dtype the mask joins: float32's minimum would become -inf in bfloat16 / float16.
    causal_mask = torch.zeros(1, 1, n_pos, n_pos, dtype=qh.dtype, device=qh.device).masked_fill(
        ~torch.ones(n_pos, n_pos, dtype=torch.bool, device=qh.device).tril(), torch.finfo(qh.dtype).min)
    combined = causal_mask if ctx.bias is None else torch.minimum(ctx.bias.to(qh.dtype), causal_mask)
    pos_column = (position / n_pos).to(qh.dtype).expand(*qh.shape[:3])[..., None]
    out_c, lse_c = fused_attention_with_lse(qh, kh, pos_column, combined, False, ctx.scale)
    mass_before = (lse_c - ctx.lse).exp()
    pos_before = mass_before * out_c[..., 0].float() * n_pos
    return mean_pos - position + 2 * (position * mass_before - pos_before)


MEAN_DISTANCE = RowStatistic(_distance_explicit, FusedRow(_distance_columns, _distance_finish))
