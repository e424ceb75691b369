"""CaptureResult: per-prompt sums and counts of every statistic, from which means and intervals follow.

Sums and counts (never averages of averages) are what is kept, so results of batches, resumed runs or
separate processes combine exactly, and analyses can bootstrap over prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from headscope.errors import InputError
from headscope.heads import head_name
from headscope.io import atomic_path, strict_json
from headscope.notebook import html_table, short_repr


@dataclass
class CaptureResult:
    """Per-prompt sums (prompts, layers, heads) and counts (prompts,) of each statistic; means and intervals derive from them."""

    sums: dict[str, torch.Tensor]  # statistic -> (n_prompts, n_layers, n_heads) float64
    counts: dict[str, torch.Tensor]  # statistic -> (n_prompts,) int64: queries counted in each prompt
    meta: dict = field(default_factory=dict)  # model, dataset, seed, versions
    patterns: object = None  # a `Patterns` when heads were recorded (not part of `save`)

    @property
    def statistics(self) -> tuple[str, ...]:
        """The statistics this result holds."""
        return tuple(self.sums)

    @property
    def n_prompts(self) -> int:
        """How many prompts were captured."""
        return next(iter(self.counts.values())).shape[0]

    def _check(self, name: str) -> None:
        if name not in self.sums:
            raise InputError(f"statistic {name!r} was not captured; captured: {', '.join(self.statistics)}")

    def mean(self, name: str) -> torch.Tensor:
        """(n_layers, n_heads) mean over every counted query of every prompt; NaN if none counted."""
        self._check(name)
        return self.sums[name].sum(0) / self.counts[name].sum()

    def count(self, name: str) -> int:
        """How many query positions counted toward `stat`, over every prompt."""
        self._check(name)
        return int(self.counts[name].sum())

    def per_prompt(self, name: str) -> torch.Tensor:
        """(n_prompts, n_layers, n_heads) mean within each prompt; NaN for a prompt with no counted query."""
        self._check(name)
        return self.sums[name] / self.counts[name][:, None, None]

    def to_rows(self) -> list[dict]:
        """One row per head: its name (as "heads": [name]), layer, head and the mean of every statistic."""
        means = {name: self.mean(name) for name in self.statistics}
        n_layers, n_heads = next(iter(means.values())).shape
        return [
            {"heads": [head_name(layer, head)], "layer": layer, "head": head,
             **{name: float(m[layer, head]) for name, m in means.items()}}
            for layer in range(n_layers) for head in range(n_heads)
        ]

    def __repr__(self) -> str:
        shape = tuple(next(iter(self.sums.values())).shape) if self.sums else ()
        return short_repr(self, {"statistics": self.statistics, "sums": f"{len(self.sums)} x {shape}",
                                 "model": self.meta.get("model", ""), "patterns": self.patterns is not None})

    def _repr_html_(self) -> str:
        """The three highest-mean heads of every statistic."""
        rows = []
        for name in self.statistics:
            means = self.mean(name)
            flat = means.flatten().nan_to_num(nan=float("-inf"))
            top = flat.argsort(descending=True)[:3].tolist()
            rows.append({"statistic": name, "queries": self.count(name), "top heads (mean)": ", ".join(
                f"{head_name(i // means.shape[1], i % means.shape[1])} {float(flat[i]):.3f}" for i in top)})
        return html_table(rows, caption=f"{self.n_prompts} prompts; per-head means")

    def to_json(self) -> str:
        """stats.json: {"model", "statistics", "counts", "results": [{"heads": [name], "layer", "head",
        <statistic>: mean}], "meta"}: a row per head, and how many queries each statistic counted."""
        counts = {name: self.count(name) for name in self.statistics}
        return strict_json({"model": self.meta.get("model"), "statistics": list(self.statistics), "counts": counts,
                            "results": self.to_rows(), "meta": self.meta})

    def tensors(self) -> dict[str, torch.Tensor]:
        """`sum/NAME` and `count/NAME` of every statistic: what `save` and progress files hold."""
        tensors = {f"sum/{n}": t.contiguous() for n, t in self.sums.items()}
        return tensors | {f"count/{n}": t.contiguous() for n, t in self.counts.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], names: list[str], meta: dict | None = None) -> "CaptureResult":
        """A result from the tensors `tensors()` produced (sums/<stat> and counts/<stat>)."""
        return cls({n: tensors[f"sum/{n}"] for n in names}, {n: tensors[f"count/{n}"] for n in names}, meta or {})

    def save(self, path: str | Path) -> None:
        """Sums and counts as safetensors, meta inside its header; written atomically."""
        metadata = {"meta": strict_json(self.meta, None), "statistics": strict_json(self.statistics, None)}
        with atomic_path(path) as tmp:
            save_file(self.tensors(), tmp, metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "CaptureResult":
        """A result written by `save` (stats.safetensors)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
            return cls.from_tensors(load_file(str(path)), json.loads(header["statistics"]), json.loads(header["meta"]))
        except Exception as err:  # safetensors and json raise their own types for a damaged file
            raise InputError(f"{path} is not a headscope capture file: {err}") from err

    @classmethod
    def concat(cls, parts: list["CaptureResult"], meta: dict | None = None) -> "CaptureResult":
        """Results over consecutive prompt ranges, joined in order."""
        names = parts[0].statistics
        sums = {n: torch.cat([p.sums[n] for p in parts]) for n in names}
        counts = {n: torch.cat([p.counts[n] for p in parts]) for n in names}
        return cls(sums, counts, meta if meta is not None else parts[0].meta)
