"""Roles across context lengths: one classification per sequence length, and each head's score by length.

A head's role can depend on how far back it has to look: on repeated random tokens of period P an
induction head must attend P tokens back, and heads that lead at short periods can fade at long ones
while others take over. `classify_across_lengths` runs `classify_heads` once per length, on prompts made
for that length (one capture and one control each), and keeps every length's role table, the time it
took and its peak memory. `LengthSweep` gives each head's score of one role by length (`to_csv`, the
figure `headscope.viz.lengths.length_figure`) beside the per-length tables (`to_json`).
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from headscope.analysis.role_registry import choose_roles
from headscope.analysis.role_table import RoleTable
from headscope.analysis.roles import MIN_SEQ_LEN, classify_heads
from headscope.capture.datasets import check_request, dataset_for_model
from headscope.errors import InputError
from headscope.io import strict_json
from headscope.model.transformer import HookedTransformer
from headscope.notebook import html_table, short_repr
from headscope.provenance import provenance

SAMPLE_S = 0.02  # how often the resident memory is read while a length runs on the CPU


@dataclass(frozen=True)
class LengthSweep:
    """Role tables of one model at several sequence lengths (`tables[i]` at `seq_lens[i]`), and the
    role whose scores the table and figure follow; `meta["per_length"]` holds each length's time and memory."""

    model: str
    role: str
    seq_lens: tuple[int, ...]
    tables: tuple[RoleTable, ...]
    meta: dict

    def scores(self, role: str | None = None) -> torch.Tensor:
        """(n_lengths, n_layers, n_heads) scores of `role` (default: the sweep's role); NaN where not scored."""
        role = role or self.role
        first = self.tables[0]
        out = torch.full((len(self.tables), first.n_layers, first.n_heads), float("nan"), dtype=torch.float64)
        for n, table in enumerate(self.tables):
            for h in table.heads:
                out[n, h.layer, h.head] = h.scores.get(role, float("nan"))
        return out

    def rows(self) -> list[dict]:
        """A row per head: "heads", layer, head, kv_group, its score at each length and the lengths where it
        holds the role, strongest head (highest score at any length) first."""
        scores = self.scores()
        first = self.tables[0]
        rows = []
        for h in first.heads:
            by_length = {str(n): _finite(float(scores[i, h.layer, h.head])) for i, n in enumerate(self.seq_lens)}
            held = [n for n, t in zip(self.seq_lens, self.tables) if self.role in t.head(h.layer, h.head).roles]
            rows.append({"heads": [h.name], "layer": h.layer, "head": h.head, "kv_group": h.kv_group,
                         "scores": by_length, "held": held})
        return sorted(rows, key=lambda r: -max((v for v in r["scores"].values() if v is not None), default=-1.0))

    def to_json(self, indent: int | None = 2) -> str:
        """{"model", "role", "seq_lens", "results": [a row per head: scores by length], "tables": {length:
        that length's roles.json}, "meta"}."""
        tables = {str(n): json.loads(t.to_json(None)) for n, t in zip(self.seq_lens, self.tables)}
        return strict_json({"model": self.model, "role": self.role, "seq_lens": list(self.seq_lens),
                            "results": self.rows(), "tables": tables, "meta": self.meta}, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> "LengthSweep":
        """A sweep written by `to_json`."""
        try:
            data = json.loads(text)
            lengths = tuple(int(n) for n in data["seq_lens"])
            tables = tuple(RoleTable.from_json(json.dumps(data["tables"][str(n)])) for n in lengths)
            return cls(str(data["model"]), str(data["role"]), lengths, tables, dict(data["meta"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise InputError(f"not a headscope length sweep: {err}") from err

    def to_csv(self) -> str:
        """A row per head: layer, head, name, kv_group, then `<role>_<length>` scores and `held_<length>`."""
        out = io.StringIO()
        names = [f"{self.role}_{n}" for n in self.seq_lens] + [f"held_{n}" for n in self.seq_lens]
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["layer", "head", "name", "kv_group", *names])
        for row in self.rows():
            scores = ["" if v is None else v for v in row["scores"].values()]
            writer.writerow([row["layer"], row["head"], row["heads"][0], row["kv_group"], *scores,
                             *(int(n in row["held"]) for n in self.seq_lens)])
        return out.getvalue()

    def __repr__(self) -> str:
        return short_repr(self, {"model": self.model, "role": self.role, "seq_lens": self.seq_lens})

    def _repr_html_(self) -> str:
        rows = [{"head": r["heads"][0], **{f"{n}": r["scores"][str(n)] for n in self.seq_lens}}
                for r in self.rows()[:10]]
        return html_table(rows, caption=f"{self.model}: {self.role} score by sequence length (top 10 heads)")


def _finite(value: float) -> float | None:
    return None if value != value else value


def classify_across_lengths(
    model: HookedTransformer,
    seq_lens: list[int] | tuple[int, ...],
    dataset: str = "repeated-random",
    *,
    role: str | None = None,
    roles=None,
    num_prompts: int = 16,
    seed: int = 0,
    mode: str = "pad",
    resume: str | Path | None = None,
    **options,
) -> LengthSweep:
    """`classify_heads` at each of `seq_lens` (content tokens per prompt, on prompts of `dataset`, a spec
    such as `repeated-random[:period=P]` or a text file, made for each length), as a `LengthSweep` that
    follows `role` (None: induction, or the first of `roles` when induction is not among them). roles: the
    roles each length scores, as `classify_heads` takes them (None: every registered role that applies).
    Every length, and the roles, are checked before anything runs.
    resume: a folder; each length keeps its progress in `len-<n>` under it. Other keyword arguments go to
    `classify_heads` (n_bootstrap, thresholds, margin, device, progress, distributed, max_memory).
    meta["per_length"]: per length, seconds, peak memory in bytes above the start and what was measured
    (the CUDA allocator's peak, or the process' resident memory sampled every 20 ms).
    """
    lengths, role = _check_lengths(model, seq_lens, dataset, num_prompts, role, roles)
    tables, per_length = [], []
    for n in lengths:
        folder = None if resume is None else Path(resume) / f"len-{n}"
        with _PeakMemory(model.device) as peak:
            began = time.perf_counter()
            data = dataset_for_model(model, dataset, seq_len=n, num_prompts=num_prompts, seed=seed, mode=mode)
            tables.append(classify_heads(model, data, seed=seed, resume=folder, roles=roles, **options))
            seconds = time.perf_counter() - began
        per_length.append({"seq_len": n, "seconds": round(seconds, 3), "peak_memory_bytes": peak.bytes,
                           "memory": peak.kind})
    first = tables[0].meta
    meta = {"dataset": dataset, "num_prompts": num_prompts, "seed": seed, "mode": mode,
            "threshold": first["thresholds"].get(role), "per_length": per_length,
            **provenance(model)}
    return LengthSweep(model.name, role, lengths, tuple(tables), meta)


def _check_lengths(model, seq_lens, dataset: str, num_prompts: int, role: str | None, roles
                   ) -> tuple[tuple[int, ...], str]:
    """The lengths and the role followed, after refusing (in one line, before any work) a bad list, roles,
    role or dataset, and any length beyond the model's context."""
    if not isinstance(model, HookedTransformer):
        raise InputError(f"classify_across_lengths needs a headscope HookedTransformer, got {type(model).__name__}")
    if not isinstance(dataset, (str, Path)):
        raise InputError("classify_across_lengths makes its prompts for each length: give a dataset spec or a "
                         f"file path, not a {type(dataset).__name__}")
    lengths = tuple(seq_lens)
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < MIN_SEQ_LEN for n in lengths):
        raise InputError(f"seq_lens must be integers of at least {MIN_SEQ_LEN}, got {list(lengths)}",
                         parameter="seq_len")
    if len(set(lengths)) != len(lengths):
        raise InputError(f"seq_lens has a length twice: {list(lengths)}", parameter="seq_len")
    names = [r.name for r in choose_roles(model, roles)]
    if role is None:
        role = "induction" if "induction" in names else names[0]
    if role not in names:
        try:
            choose_roles(model, [role])  # an unknown role, or one this model cannot score, says so
        except InputError as err:
            raise InputError(str(err), parameter="role") from err
        raise InputError(f"role {role} is followed across lengths but not among the roles scored "
                         f"({', '.join(names)})", parameter="role")
    for n in lengths:
        check_request(model, str(dataset), n, num_prompts)
    return lengths, role


class _PeakMemory:
    """The peak memory of a block above its start: the CUDA allocator's on a GPU, else the resident set
    size read from /proc/self/statm by a sampling thread (None where there is no /proc)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.kind = "cuda max_memory_allocated" if self.cuda else "process resident memory, sampled"
        self.bytes: int | None = None

    def __enter__(self) -> "_PeakMemory":
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = _rss()
        self.running = self.base is not None
        self.thread = threading.Thread(target=self._sample, daemon=True)
        if self.running:
            self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(SAMPLE_S)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = int(torch.cuda.max_memory_allocated() - self.base)
        elif self.running:
            self.running = False
            self.thread.join()
            self.bytes = int(max(self.peak, _rss()) - self.base)


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None
