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

Each statistic is one `Statistic` object (its plan, and for a whole-row one its `RowStatistic` from
`headscope.capture.rows`, which both capture paths compute from); `BUILT_IN` holds the ones above, and
`capture` takes any other `Statistic` object beside their names. Padding is never a query or a key. Compared with TransformerLens' `detect_head` (which scores
sum(A * D) / sum(A) over the lower triangle for a detection pattern D): its previous-token pattern is our
previous_token entry, its duplicate pattern our duplicate_token pairs, and its induction pattern (the
duplicate pattern shifted right by one column) our induction pairs. Ours is a mean over the queries where
the role is possible, not a ratio over the whole triangle, so it reads as "attention this head puts where
the role says, when it can"; `headscope.analysis` reproduces TransformerLens' numbers as an option.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from headscope.capture.occurrences import earlier_occurrence_pairs, induction_target_pairs
from headscope.capture.rows import ENTROPY, MEAN_DISTANCE, RowStatistic
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
    """Take the whole-row quantity `row` (a `RowStatistic`) of A on the marked rows."""

    row: RowStatistic
    queries: torch.Tensor  # (batch, pos) bool


def offset_plan(batch: Batch, queries: torch.Tensor, offset: int) -> EntryPlan:
    """The plan of A[i, i + offset] over the marked queries (batch, pos) bool."""
    b, i = queries.nonzero(as_tuple=True)
    return EntryPlan(b, i, i + offset, queries)


def pairs_plan(batch: Batch, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> EntryPlan:
    """The plan of the pairs (batch index, query, key), each a 1-d tensor; the queries named are counted."""
    b, i, j = pairs
    queries = torch.zeros_like(batch.real)
    queries[b, i] = True
    return EntryPlan(b, i, j, queries)


def mask_plan(batch: Batch, mask: torch.Tensor) -> EntryPlan:
    """The plan of a detection pattern, as TransformerLens' `detect_head` takes one: `mask` (query, key) or
    (batch, query, key) bool marks the entries to add up. Only pairs of real tokens a query can see are
    kept (j <= i when causal); the queries with at least one such pair are counted."""
    n_pos = batch.tokens.shape[1]
    mask = torch.as_tensor(mask, device=batch.tokens.device).bool()
    if mask.shape[-2:] != (n_pos, n_pos) or mask.dim() not in (2, 3):
        raise InputError(f"a detection pattern must be (query, key) or (batch, query, key) with {n_pos} positions, "
                         f"got shape {tuple(mask.shape)}")
    visible = batch.real[:, :, None] & batch.real[:, None, :]
    if batch.causal:
        visible = visible & torch.ones(n_pos, n_pos, dtype=torch.bool, device=mask.device).tril()
    b, i, j = (mask.expand_as(visible) & visible).nonzero(as_tuple=True)
    return pairs_plan(batch, (b, i, j))


@dataclass(frozen=True)
class Statistic:
    """A per-head statistic: `entries(batch)` (an `EntryPlan`, or a (query, key) / (batch, query, key) bool
    detection pattern) or a whole-row `row` counted on `queries(batch)`; `causal` / `encoder`: whether it
    applies to causal / bidirectional models; `aliases`: short names."""

    name: str
    entries: Callable[[Batch], EntryPlan | torch.Tensor] | None = None
    row: RowStatistic | None = None
    queries: Callable[[Batch], torch.Tensor] = Batch.default_queries
    causal: bool = True
    encoder: bool = True
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise InputError(f"a statistic's name must be a Python identifier, got {self.name!r}")
        if (self.entries is None) == (self.row is None):
            raise InputError(f"statistic {self.name!r} needs exactly one of entries (pairs of positions) or row "
                             "(a RowStatistic)")
        if self.row is not None and not isinstance(self.row, RowStatistic):
            raise InputError(f"statistic {self.name!r}: row must be a RowStatistic, got {type(self.row).__name__}")

    def applies(self, causal: bool) -> bool:
        """Whether the statistic applies to a causal (True) or bidirectional (False) model."""
        return self.causal if causal else self.encoder

    def plan(self, batch: Batch) -> EntryPlan | RowPlan:
        """This statistic's plan for one batch."""
        if not self.applies(batch.causal):
            kind = "bidirectional (encoder)" if batch.causal else "causal"
            raise InputError(f"{self.name} needs a {kind} model: it does not apply to this one")
        if self.row is not None:
            return RowPlan(self.row, self.queries(batch))
        plan = self.entries(batch)
        return plan if isinstance(plan, EntryPlan) else mask_plan(batch, plan)


def _previous_token(batch: Batch) -> EntryPlan:
    first_real = 1 if batch.has_bos else 0
    queries = batch.real & (batch.positions >= first_real + 1)
    return offset_plan(batch, queries, -1)


def _current_token(batch: Batch) -> EntryPlan:
    return offset_plan(batch, batch.default_queries(), 0)


def _next_token(batch: Batch) -> EntryPlan:
    next_real = torch.zeros_like(batch.real)
    next_real[:, :-1] = batch.real[:, 1:]
    return offset_plan(batch, batch.real & next_real, +1)


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
    last = batch.real.sum(1) - 1  # right padding: the last real position of each prompt
    queries = batch.real & (batch.positions < last[:, None])
    b, i = queries.nonzero(as_tuple=True)
    return EntryPlan(b, i, last[b], queries)


def _duplicate_token(batch: Batch) -> EntryPlan:
    return pairs_plan(batch, earlier_occurrence_pairs(batch.tokens, batch.real, batch.has_bos))


def _induction(batch: Batch) -> EntryPlan:
    return pairs_plan(batch, induction_target_pairs(batch.tokens, batch.real, batch.has_bos))


BUILT_IN = {stat.name: stat for stat in (
    Statistic("previous_token", _previous_token, aliases=("prev",)),
    Statistic("current_token", _current_token, aliases=("self", "current")),
    Statistic("next_token", _next_token, causal=False, aliases=("next",)),
    Statistic("attention_sink", _attention_sink, aliases=("sink", "bos")),
    Statistic("local", _local),
    Statistic("sep", _sep, causal=False),
    Statistic("duplicate_token", _duplicate_token, aliases=("dup", "duplicate")),
    Statistic("induction", _induction),
    Statistic("entropy", row=ENTROPY),
    Statistic("mean_distance", row=MEAN_DISTANCE, aliases=("distance",)),
)}
STATISTICS = tuple(BUILT_IN)
CAUSAL_STATISTICS = tuple(name for name, stat in BUILT_IN.items() if stat.causal)
# Short names for the command line.
ALIASES = {alias: name for name, stat in BUILT_IN.items() for alias in stat.aliases}


def resolve_statistics(items, causal: bool | None = None) -> tuple[Statistic, ...]:
    """`Statistic` objects for names (or their short aliases) and objects, in order, without repeats.

    An unknown name, an empty list, or two different statistics of one name is an InputError; None or
    an empty `items` with `causal` given: every built-in statistic that applies to such a model.
    """
    if not items and causal is not None:
        return tuple(stat for stat in BUILT_IN.values() if stat.applies(causal))
    chosen: dict[str, Statistic] = {}
    for item in list(items or ()):
        stat = item if isinstance(item, Statistic) else BUILT_IN.get(ALIASES.get(item, item))
        if stat is None:
            raise InputError(f"unknown statistic {item!r}; choose from {', '.join(STATISTICS)} "
                             f"(or {', '.join(ALIASES)})")
        if chosen.get(stat.name, stat) != stat:
            raise InputError(f"two different statistics are named {stat.name!r}")
        chosen[stat.name] = stat
    if not chosen:
        raise InputError("no statistics asked for")
    return tuple(chosen.values())


def check_statistics(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The names (or their short aliases), validated; an unknown one is an InputError listing the known ones."""
    return tuple(stat.name for stat in resolve_statistics(names))


def make_plans(stats, batch: Batch) -> dict[str, EntryPlan | RowPlan]:
    """The plan of each statistic (`Statistic` objects or names) for one batch, by name."""
    return {stat.name: stat.plan(batch) for stat in resolve_statistics(stats)}
