"""Per-head attention statistics: what each one measures and which query positions count.

Every statistic is a mean over counted query positions i (of all prompts) of a per-row value of the
pattern A (rows sum to 1). A *plan* says, for one batch of prompts, which queries count and either
which entries (i, j) of A to add up per row ("entries"), or which whole-row quantity to take ("row").
Plans depend only on the tokens, so they are built once per batch and shared by every layer.

| statistic | per-row value | queries counted |
|---|---|---|
| previous_token | A[i, i-1] | i >= 1 (i >= 2 with BOS, so the previous token is a real one) |
| current_token | A[i, i] | i >= 1 (causal; row 0 is trivially 1), every real i (encoders) |
| next_token | A[i, i+1] | i whose next token is real; encoders only |
| attention_sink | A[i, 0], attention to the first (BOS/[CLS]) position | i >= 1 |
| local | A[i, i-1] + A[i, i-2] + A[i, i-3], mass on the 3 previous real positions (BOS is not one) | as previous_token |
| sep | A[i, last], attention to the last real position (the [SEP] of an encoder prompt) | every real i before it; encoders only |
| duplicate_token | sum of A[i, j] over earlier j with token j == token i | i with an earlier duplicate |
| induction | sum of A[i, j+1] over those earlier duplicates j | i with an earlier duplicate |
| entropy | -sum_j A[i, j] log A[i, j], in nats | i >= 1 (causal), every real i (encoders) |
| mean_distance | sum_j A[i, j] abs(i - j), in positions | as entropy |

Padding is never a query or a key. Compared with TransformerLens' `detect_head` (which scores
sum(A * D) / sum(A) over the lower triangle for a detection pattern D): its previous-token pattern is our
previous_token entry, its duplicate pattern our duplicate_token pairs, and its induction pattern (the
duplicate pattern shifted right by one column) our induction pairs. Ours is a mean over the queries where
the role is possible, not a ratio over the whole triangle, so it reads as "attention this head puts where
the role says, when it can"; `headscope.analysis` reproduces TransformerLens' numbers as an option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from headscope.capture.occurrences import earlier_occurrence_pairs, induction_target_pairs
from headscope.errors import InputError


@dataclass(frozen=True)
class Batch:
    """What plans read: the tokens of one batch and how to treat their first position and padding."""

    tokens: torch.Tensor  # (batch, pos)
    real: torch.Tensor  # (batch, pos) bool, False on padding
    has_bos: bool
    causal: bool

    @property
    def positions(self) -> torch.Tensor:
        """(batch, pos) position index of every token."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device).expand_as(self.tokens)

    def default_queries(self) -> torch.Tensor:
        """Rows with a choice to make: all real rows, less row 0 of a causal model (it sees one key)."""
        return self.real & (self.positions >= 1) if self.causal else self.real


@dataclass(frozen=True)
class EntryPlan:
    """Add up A[b, :, i, j] over the listed pairs; `queries` marks the rows counted in the mean."""

    batch_idx: torch.Tensor
    query_idx: torch.Tensor
    key_idx: torch.Tensor
    queries: torch.Tensor  # (batch, pos) bool


@dataclass(frozen=True)
class RowPlan:
    """Take a whole-row quantity of A on the marked rows."""

    row: Literal["entropy", "mean_distance"]
    queries: torch.Tensor  # (batch, pos) bool


def _offset_plan(batch: Batch, queries: torch.Tensor, offset: int) -> EntryPlan:
    b, i = queries.nonzero(as_tuple=True)
    return EntryPlan(b, i, i + offset, queries)


def _previous_token(batch: Batch) -> EntryPlan:
    first_real = 1 if batch.has_bos else 0
    queries = batch.real & (batch.positions >= first_real + 1)
    return _offset_plan(batch, queries, -1)


def _current_token(batch: Batch) -> EntryPlan:
    return _offset_plan(batch, batch.default_queries(), 0)


def _next_token(batch: Batch) -> EntryPlan:
    if batch.causal:
        raise InputError("next_token needs a bidirectional (encoder) model: a causal model cannot attend ahead")
    next_real = torch.zeros_like(batch.real)
    next_real[:, :-1] = batch.real[:, 1:]
    return _offset_plan(batch, batch.real & next_real, +1)


def _attention_sink(batch: Batch) -> EntryPlan:
    queries = batch.real & (batch.positions >= 1)
    b, i = queries.nonzero(as_tuple=True)
    return EntryPlan(b, i, torch.zeros_like(i), queries)


def _local(batch: Batch, width: int = 3) -> EntryPlan:
    first_real = 1 if batch.has_bos else 0
    queries = batch.real & (batch.positions >= first_real + 1)
    b, i = queries.nonzero(as_tuple=True)
    offsets = torch.arange(1, width + 1, device=i.device)
    keys = i[:, None] - offsets  # (queries, width)
    keep = keys >= first_real
    return EntryPlan(b[:, None].expand_as(keys)[keep], i[:, None].expand_as(keys)[keep], keys[keep], queries)


def _sep(batch: Batch) -> EntryPlan:
    if batch.causal:
        raise InputError("sep needs a bidirectional (encoder) model: a causal query cannot see the last position")
    last = batch.real.sum(1) - 1  # right padding: the last real position of each prompt
    queries = batch.real & (batch.positions < last[:, None])
    b, i = queries.nonzero(as_tuple=True)
    return EntryPlan(b, i, last[b], queries)


def _pairs_plan(batch: Batch, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> EntryPlan:
    b, i, j = pairs
    queries = torch.zeros_like(batch.real)
    queries[b, i] = True
    return EntryPlan(b, i, j, queries)


def _duplicate_token(batch: Batch) -> EntryPlan:
    return _pairs_plan(batch, earlier_occurrence_pairs(batch.tokens, batch.real, batch.has_bos))


def _induction(batch: Batch) -> EntryPlan:
    return _pairs_plan(batch, induction_target_pairs(batch.tokens, batch.real, batch.has_bos))


def _entropy(batch: Batch) -> RowPlan:
    return RowPlan("entropy", batch.default_queries())


def _mean_distance(batch: Batch) -> RowPlan:
    return RowPlan("mean_distance", batch.default_queries())


PLANS = {
    "previous_token": _previous_token,
    "current_token": _current_token,
    "next_token": _next_token,
    "attention_sink": _attention_sink,
    "local": _local,
    "sep": _sep,
    "duplicate_token": _duplicate_token,
    "induction": _induction,
    "entropy": _entropy,
    "mean_distance": _mean_distance,
}
STATISTICS = tuple(PLANS)
CAUSAL_STATISTICS = tuple(name for name in STATISTICS if name not in ("next_token", "sep"))
# Short names for the command line.
ALIASES = {"prev": "previous_token", "self": "current_token", "current": "current_token", "next": "next_token",
           "sink": "attention_sink", "bos": "attention_sink", "dup": "duplicate_token",
           "duplicate": "duplicate_token", "distance": "mean_distance"}


def check_statistics(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The names (or their short aliases), validated; an unknown one is an InputError listing the known ones."""
    resolved = [ALIASES.get(n, n) for n in names]
    unknown = [n for n in resolved if n not in PLANS]
    if unknown:
        raise InputError(f"unknown statistic {unknown[0]!r}; choose from {', '.join(STATISTICS)} "
                         f"(or {', '.join(ALIASES)})")
    if not resolved:
        raise InputError("no statistics asked for")
    return tuple(dict.fromkeys(resolved))


def make_plans(names: tuple[str, ...], batch: Batch) -> dict[str, EntryPlan | RowPlan]:
    """The plan of each named statistic for one batch."""
    return {name: PLANS[name](batch) for name in names}
