"""The role table: every head's scores, intervals, nulls, roles and reasons, and its JSON and CSV forms."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from headscope.errors import InputError
from headscope.heads import head_name
from headscope.io import strict_json
from headscope.model.transformer import HookedTransformer
from headscope.notebook import html_table, short_repr


@dataclass(frozen=True)
class HeadRoles:
    """One head's scores, their intervals and nulls, the roles it was given and why."""

    layer: int
    head: int
    scores: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    nulls: dict[str, float]
    roles: tuple[str, ...]
    reasons: dict[str, str]  # role -> why it was given
    rejected: dict[str, str] = field(default_factory=dict)  # role -> why a score above threshold was not enough
    copying: float | None = None  # direct logit effect on the copied token (induction candidates only)
    kv_group: int | None = None  # the key/value head it reads (GQA: heads of one group share it); None: unknown

    def __eq__(self, other: object) -> bool:
        """Equal when their JSON rows are: a NaN (a score role's missing interval or null) equals a NaN."""
        return isinstance(other, HeadRoles) and self.to_dict() == other.to_dict()

    @property
    def name(self) -> str:
        """The head's name, e.g. "L1H6"."""
        return head_name(self.layer, self.head)

    @property
    def top_score(self) -> float:
        """The highest score among the roles it holds (-inf with none): the order tables are printed in."""
        return max((self.scores[r] for r in self.roles), default=-math.inf)

    def to_dict(self) -> dict:
        """One row of roles.json's "results", NaN written as null."""
        return {"heads": [self.name], "layer": self.layer, "head": self.head,
                "scores": {r: _finite(v) for r, v in self.scores.items()}, "roles": list(self.roles),
                "intervals": {r: [_finite(lo), _finite(hi)] for r, (lo, hi) in self.intervals.items()},
                "nulls": {r: _finite(v) for r, v in self.nulls.items()}, "reasons": dict(self.reasons),
                "rejected": dict(self.rejected), "copying": self.copying, "kv_group": self.kv_group}

    @classmethod
    def from_dict(cls, row: dict) -> "HeadRoles":
        """A row of roles.json back, null read as NaN."""
        return cls(int(row["layer"]), int(row["head"]), {r: _float(v) for r, v in row["scores"].items()},
                   {r: (_float(lo), _float(hi)) for r, (lo, hi) in row.get("intervals", {}).items()},
                   {r: _float(v) for r, v in row.get("nulls", {}).items()}, tuple(row["roles"]),
                   dict(row.get("reasons", {})), dict(row.get("rejected", {})),
                   None if row.get("copying") is None else float(row["copying"]),
                   None if row.get("kv_group") is None else int(row["kv_group"]))


@dataclass(frozen=True)
class RoleTable:
    """Roles of every head of one model; `to_json` is the file other tools read (roles.json)."""

    model: str
    n_layers: int
    n_heads: int
    heads: tuple[HeadRoles, ...]
    meta: dict

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles every head was scored on, in table order."""
        return tuple(self.heads[0].scores) if self.heads else ()

    @property
    def kv_group_size(self) -> int | None:
        """How many query heads share one key/value head (1 without GQA); None when the table does not say."""
        groups = [h.kv_group for h in self.heads if h.layer == 0]
        if not groups or None in groups:
            return None
        return groups.count(groups[0])

    def head(self, layer: int, head: int) -> HeadRoles:
        """The row of head (layer, head)."""
        return self.heads[layer * self.n_heads + head]

    def heads_with_roles(self) -> list[HeadRoles]:
        """Heads holding at least one role, the highest score of a held role first."""
        return sorted((h for h in self.heads if h.roles), key=lambda h: (-h.top_score, h.layer, h.head))

    def with_role(self, role: str) -> list[HeadRoles]:
        """The heads holding `role`, highest score first."""
        return [h for h in self.heads_with_roles() if role in h.roles]

    def to_json(self, indent: int | None = 2) -> str:
        """roles.json: {"model", "n_layers", "n_heads", "results": [a row per head, its "heads" the head's
        name], "meta"} (headscope 0.1 wrote the rows under "heads"; `from_json` reads both)."""
        return strict_json({"model": self.model, "n_layers": self.n_layers, "n_heads": self.n_heads,
                            "results": [h.to_dict() for h in self.heads], "meta": self.meta}, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> "RoleTable":
        """A table written by `to_json` (e.g. the contents of roles.json)."""
        try:
            data = json.loads(text)
            rows = data["results"] if "results" in data else data["heads"]  # 0.1 files: rows under "heads"
            heads = tuple(HeadRoles.from_dict(row) for row in rows)
            return cls(str(data["model"]), int(data["n_layers"]), int(data["n_heads"]), heads, dict(data["meta"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise InputError(f"not a headscope role table: {err}") from err

    @classmethod
    def read(cls, path: str | Path, model: HookedTransformer | None = None) -> "RoleTable":
        """A roles.json file, checked against `model`'s shape when one is given."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read role table {path}: {err}") from err
        table = cls.from_json(text)
        if model is not None and (table.n_layers, table.n_heads) != (model.cfg.n_layers, model.cfg.n_heads):
            raise InputError(f"{path} describes {table.n_layers} x {table.n_heads} heads, the model has "
                             f"{model.cfg.n_layers} x {model.cfg.n_heads}")
        return table

    def save(self, path: str | Path) -> None:
        """Write `to_json` to `path` atomically."""
        from headscope.io import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_text(self.to_json())

    def _rows(self) -> list[dict]:
        rows = []
        for h in self.heads:
            row = {"layer": h.layer, "head": h.head, "name": h.name, "kv_group": h.kv_group, "roles": ";".join(h.roles)}
            for role in self.roles:
                lo, hi = h.intervals.get(role, (math.nan, math.nan))
                row |= {role: h.scores[role], f"{role}_lo": lo, f"{role}_hi": hi, f"{role}_null": h.nulls.get(role)}
            rows.append(row | {"copying": h.copying})
        return rows

    def to_csv(self) -> str:
        """One row per head: every role's score, interval ends (`_lo`, `_hi`) and null, roles joined by ';'."""
        rows = self._rows()
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["layer", "head"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        return out.getvalue()

    def held_rows(self) -> list[dict]:
        """One row per role a head holds, top heads first: head, role, score, 95% interval, null."""
        return [{"head": h.name, "role": role, "score": h.scores[role], "95% interval": list(h.intervals.get(role, ())),
                 "null": h.nulls.get(role)} for h in self.heads_with_roles() for role in h.roles]

    def __repr__(self) -> str:
        return short_repr(self, {"model": self.model, "heads": f"{self.n_layers}x{self.n_heads}", "roles": self.roles,
                                 "holding_roles": len(self.heads_with_roles())})

    def _repr_html_(self) -> str:
        held = len(self.heads_with_roles())
        return html_table(self.held_rows(), caption=f"{self.model}: {held} of {self.n_layers * self.n_heads} "
                                                    "heads hold roles")

    def to_frame(self):
        """The CSV's rows as a pandas DataFrame (pandas is needed only here)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("RoleTable.to_frame needs pandas: pip install pandas (or use to_csv / to_json)") from err
        return pd.DataFrame(self._rows())


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _float(value) -> float:
    return math.nan if value is None else float(value)
