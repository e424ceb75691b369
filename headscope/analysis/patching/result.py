"""One result type for every patching experiment: exact, path and attribution patching alike.

JSON: `{"model", "kind", "method", "metric", "clean", "corrupted", "results": [{"heads", "positions",
"value", "normalized", "ci", ...}], "meta"}`, the vocabulary `ablate --json` uses. "clean" and
"corrupted" are the metric's means on the two unpatched runs; each result's "value" is the metric's mean
with that patch, "normalized" the same on the scale 0 = corrupted run, 1 = clean run (null when the two
runs score alike), "ci" a bootstrap 95% interval of "value" over pairs. Residual-stream results name
their "layer" and no heads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from headscope.heads import head_name, parse_heads

KINDS = ("head", "head-pos", "resid", "q", "k", "v", "pattern", "path")


@dataclass(frozen=True)
class PatchEffect:
    """One patch: the heads (or, for the residual stream, the layer) and positions patched, and the metric."""

    heads: tuple[tuple[int, int], ...]
    positions: tuple[int, ...] | None
    value: float
    normalized: float | None
    ci: tuple[float, float]
    layer: int | None = None  # residual-stream patches: the layer whose input is patched

    def to_dict(self) -> dict:
        entry = {"heads": [head_name(l, h) for l, h in self.heads],
                 "positions": None if self.positions is None else list(self.positions),
                 "value": _finite(self.value), "normalized": _finite(self.normalized),
                 "ci": [_finite(c) for c in self.ci]}
        return entry if self.layer is None else entry | {"layer": self.layer}


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


@dataclass(frozen=True)
class PatchResult:
    """Effects of patches on a metric, with the clean and corrupted runs' means to read them against."""

    model: str
    kind: str  # one of KINDS
    method: str  # exact, atp, atp*, path, dla
    metric: str
    clean: float
    corrupted: float
    effects: tuple[PatchEffect, ...]
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        best = max(self.effects, key=lambda e: abs(e.value - self.base), default=None)
        top = "" if best is None else f", strongest {self._label(best)} -> {best.value:.4g}"
        return (f"PatchResult({self.kind}, {self.method}, {self.metric}: clean {self.clean:.4g}, corrupted "
                f"{self.corrupted:.4g}, {len(self.effects)} patches{top})")

    @property
    def base(self) -> float:
        """The metric of the run being patched (the corrupted one when denoising)."""
        return self.corrupted if self.meta.get("denoise") else self.clean

    @staticmethod
    def _label(effect: PatchEffect) -> str:
        names = ",".join(head_name(l, h) for l, h in effect.heads) or f"resid L{effect.layer}"
        return names + ("" if effect.positions is None else f"@{','.join(map(str, effect.positions))}")

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "kind": self.kind, "method": self.method, "metric": self.metric,
                           "clean": _finite(self.clean), "corrupted": _finite(self.corrupted),
                           "results": [e.to_dict() for e in self.effects], "meta": self.meta}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> PatchResult:
        data = json.loads(text)
        effects = tuple(
            PatchEffect(tuple(parse_heads(e["heads"], 1 << 30, 1 << 30)) if e["heads"] else (),
                        None if e["positions"] is None else tuple(e["positions"]),
                        _number(e["value"]), e["normalized"], tuple(_number(c) for c in e["ci"]), e.get("layer"))
            for e in data["results"])
        return cls(data["model"], data["kind"], data["method"], data["metric"], _number(data["clean"]),
                   _number(data["corrupted"]), effects, data["meta"])

    def grid(self, n_layers: int, n_heads: int, normalized: bool = False) -> torch.Tensor:
        """(layers, heads) values of single-head patches (NaN where none)."""
        out = torch.full((n_layers, n_heads), float("nan"))
        for e in self.effects:
            if len(e.heads) == 1 and e.positions is None:
                out[e.heads[0]] = _pick(e, normalized)
        return out

    def position_grid(self, n_rows: int, n_pos: int, normalized: bool = False) -> torch.Tensor:
        """(layers, pos) for residual-stream patches; (layers * heads, pos) rows L0H0, L0H1, ... for head x
        position patches (n_rows = layers * heads)."""
        out = torch.full((n_rows, n_pos), float("nan"))
        n_heads = self.meta.get("n_heads", 1)
        for e in self.effects:
            if e.positions is not None and len(e.positions) == 1:
                row = e.layer if e.layer is not None else e.heads[0][0] * n_heads + e.heads[0][1]
                out[row, e.positions[0]] = _pick(e, normalized)
        return out


def _pick(effect: PatchEffect, normalized: bool) -> float:
    value = effect.normalized if normalized else effect.value
    return float("nan") if value is None else value


def _number(x: float | None) -> float:
    return float("nan") if x is None else float(x)
