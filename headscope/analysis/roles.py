"""Head roles: which attention heads are previous-token, induction, duplicate-token, sink, self, local heads.

`classify_heads` captures per-head statistics (`headscope.capture.statistics`) on a probe dataset and on
a control, and gives a head a role when three things hold:

1. its score (a statistic's mean over the prompts, an attention mass in [0, 1]) is at least the role's
   threshold (`DEFAULT_THRESHOLDS`, overridable);
2. the lower end of its bootstrap 95% interval over prompts exceeds the role's null by `margin`;
3. for induction, that is measured with the same definition as the score.

| role | statistic | score: attention the head puts... | null |
|---|---|---|---|
| previous_token | previous_token | on the previous real token | uniform attention on the same queries |
| induction | induction | on the token after an earlier occurrence of the current one | the same head, same positions, shuffled tokens |
| duplicate_token | duplicate_token | on earlier occurrences of the current token | the same head, same positions, shuffled tokens |
| attention_sink | attention_sink | on position 0 (BOS / [CLS]) | uniform attention |
| self | current_token | on the query's own position | uniform attention |
| local | local | on the 3 previous real positions | uniform attention |
| next_token | next_token | on the next token (encoders) | uniform attention |
| sep | sep | on the last real position, [SEP] (encoders) | uniform attention |

Nulls. A positional role is a claim about where a head looks; its null is what a head that looks
nowhere in particular (uniform attention over the keys it can see) would score on exactly the same
queries, computed exactly: for previous_token under causal attention a query i contributes 1/(i+1).
A content role is a claim that the head looks at a place *because of the tokens there*; its null is the
same head's attention to the *same positions* when the model reads a control: the same prompts with their
tokens shuffled within each prompt (seeded; position 0 stays first when it is BOS), so that what stands at
those positions no longer makes them targets (`capture(..., plan_dataset=probe)`). A head that attends
there by position alone (a fixed offset equal to the period, say) scores as high on the control and gets
no role; an induction head, which follows the tokens, scores near the uniform level on it. (Scoring the
shuffled prompts at *their own* duplicates instead would measure the same mechanism again: a trained
induction head still finds the token after a lone earlier duplicate.)

References
----------
Olsson et al. (2022), "In-context Learning and Induction Heads", Transformer Circuits Thread.
Xiao et al. (2024), "Efficient Streaming Language Models with Attention Sinks", ICLR.
Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile intervals).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from headscope import distributed as distributed_run
from headscope.analysis import intervals
from headscope.capture.datasets import TokenDataset, dataset_for_model, fit_seq_len
from headscope.capture.engine import capture
from headscope.capture.result import CaptureResult
from headscope.capture.statistics import Batch, EntryPlan, make_plans
from headscope.errors import InputError
from headscope.heads import head_name
from headscope.io import strict_json
from headscope.model.transformer import HookedTransformer
from headscope.notebook import html_table, short_repr
from headscope.progress import discard
from headscope.provenance import provenance

# role -> the capture statistic that scores it
ROLE_STATISTICS = {
    "previous_token": "previous_token", "induction": "induction", "duplicate_token": "duplicate_token",
    "attention_sink": "attention_sink", "self": "current_token", "local": "local",
    "next_token": "next_token", "sep": "sep",
}
CAUSAL_ROLES = ("previous_token", "induction", "duplicate_token", "attention_sink", "self", "local")
ENCODER_ROLES = CAUSAL_ROLES + ("next_token", "sep")
CONTENT_ROLES = ("induction", "duplicate_token")  # null: shuffled control at the same positions; others: uniform
# Fractions of attention. 0.4 is "the largest single thing the head does" for a one-position role; the
# sink and local roles gather mass over more keys (or from uniform heads early in a row), so they ask more.
DEFAULT_THRESHOLDS = {
    "previous_token": 0.4, "induction": 0.4, "duplicate_token": 0.4, "attention_sink": 0.6, "self": 0.4,
    "local": 0.6, "next_token": 0.4, "sep": 0.4,
}
DEFAULT_MARGIN = 0.05
CONFIDENCE = intervals.CONFIDENCE
MIN_SEQ_LEN = 4  # two periods of at least two tokens


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
                "rejected": dict(self.rejected), "copying": self.copying}

    @classmethod
    def from_dict(cls, row: dict) -> "HeadRoles":
        """A row of roles.json back, null read as NaN."""
        return cls(int(row["layer"]), int(row["head"]), {r: _float(v) for r, v in row["scores"].items()},
                   {r: (_float(lo), _float(hi)) for r, (lo, hi) in row.get("intervals", {}).items()},
                   {r: _float(v) for r, v in row.get("nulls", {}).items()}, tuple(row["roles"]),
                   dict(row.get("reasons", {})), dict(row.get("rejected", {})),
                   None if row.get("copying") is None else float(row["copying"]))


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
            row = {"layer": h.layer, "head": h.head, "name": h.name, "roles": ";".join(h.roles)}
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


# ---------------------------------------------------------------------------------------------------------
# classify_heads


def classify_heads(
    model: HookedTransformer,
    dataset: TokenDataset | str | None = None,
    *,
    seq_len: int | None = None,
    num_prompts: int = 16,
    seed: int = 0,
    n_bootstrap: int = 1000,
    thresholds: dict[str, float] | None = None,
    margin: float = DEFAULT_MARGIN,
    device: str | torch.device | None = None,
    progress: bool = False,
    distributed: bool | None = None,
    resume: str | Path | None = None,
    max_memory: int | None = None,
) -> RoleTable:
    """Give every head of `model` the roles its attention supports (see the module docstring).

    dataset: a `TokenDataset`, a dataset spec (`repeated-random[:period=P]`, a .txt or .jsonl file), or
    None for `num_prompts` repeated-random prompts of `seq_len` tokens (two periods of seq_len // 2; None:
    64, or what fits the model's context).
    Two captures are run: the dataset, and its shuffled control (tokens permuted within each prompt with
    `seed`) scored at the dataset's own target positions. thresholds: per-role minimum scores, merged over `DEFAULT_THRESHOLDS`. margin: how far the
    lower end of the bootstrap 95% interval (`n_bootstrap` resamples of the prompts, seeded) must exceed
    the null. A head may hold several roles; a head scoring above a threshold without the role says why
    in `rejected`. Induction candidates get a copying score (`headscope.analysis.detectors`).
    distributed: split the prompts across the processes of a torch.distributed group (None: when there is
    one); every process gets the whole table (see `headscope.distributed`).
    resume: a folder for the two captures' progress files: a rerun with the same model, data and options
    continues where the last stopped, a finished capture included; they are removed at the end.
    max_memory: bytes for each forward pass's activations (default: a share of the free memory, see
    `headscope.capture.capture`); the bootstrap draws its resamples in bounded chunks whatever the prompts.

    References
    ----------
    Olsson et al. (2022), "In-context Learning and Induction Heads".
    """
    if not isinstance(model, HookedTransformer):
        raise InputError(f"classify_heads needs a headscope HookedTransformer, got {type(model).__name__}: "
                         "load it with headscope.load_model")
    roles = CAUSAL_ROLES if model.cfg.causal else ENCODER_ROLES
    limits = _check_options(thresholds, margin, n_bootstrap, roles)
    dataset = _resolve_dataset(model, dataset, seq_len, num_prompts, seed)
    stats = [ROLE_STATISTICS[r] for r in roles]
    stages = {name: None if resume is None else Path(resume) / f"{name}.progress.safetensors"
              for name in ("probe", "control")}
    if resume is not None:
        try:
            Path(resume).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the resume folder {resume}: {err.strerror}") from err
    probe = capture(model, dataset, stats, device=device, progress=progress, distributed=distributed,
                    resume=stages["probe"], keep_progress=True, max_memory=max_memory)
    control = capture(model, shuffled_control(dataset, seed), [ROLE_STATISTICS[r] for r in CONTENT_ROLES],
                      device=device, plan_dataset=dataset, progress=progress, distributed=distributed,
                      resume=stages["control"], keep_progress=True, max_memory=max_memory)
    scores = {r: probe.mean(ROLE_STATISTICS[r]) for r in roles}
    intervals = {r: bootstrap_interval(probe, ROLE_STATISTICS[r], n_bootstrap, seed) for r in roles}
    nulls = _nulls(model, dataset, control, roles)
    copying = _copying_candidates(model, dataset, scores["induction"], limits["induction"], distributed)
    heads = tuple(
        _judge(layer, head, roles, scores, intervals, nulls, limits, margin, copying)
        for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
    )
    meta = {"dataset": dataset.name, "dataset_meta": dataset.meta, "seq_len": int(dataset.tokens.shape[1]),
            "num_prompts": len(dataset), "seed": seed, **provenance(model),
            "thresholds": limits, "margin": margin, "n_bootstrap": n_bootstrap, "confidence": CONFIDENCE,
            "nulls": {r: "shuffled control, same positions" if r in CONTENT_ROLES else "uniform attention"
                      for r in roles}}
    for path in stages.values():
        discard(path, distributed_run.active(distributed))
    return RoleTable(model.name, model.cfg.n_layers, model.cfg.n_heads, heads, meta)


def _check_options(thresholds, margin, n_bootstrap, roles) -> dict[str, float]:
    limits = {r: DEFAULT_THRESHOLDS[r] for r in roles}
    for role, value in (thresholds or {}).items():
        if role not in ROLE_STATISTICS:
            raise InputError(f"unknown role {role!r} in thresholds; roles: {', '.join(ROLE_STATISTICS)}")
        if not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InputError(f"threshold for {role} must be a number in [0, 1] (an attention mass), got {value!r}")
        if role in limits:
            limits[role] = float(value)
    if not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise InputError(f"margin must be in [0, 1), got {margin!r}")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 10:
        raise InputError(f"n_bootstrap must be an integer of at least 10, got {n_bootstrap!r}")
    return limits


def _resolve_dataset(model, dataset, seq_len: int | None, num_prompts: int, seed: int) -> TokenDataset:
    if isinstance(dataset, TokenDataset):
        if len(dataset) == 0:
            raise InputError("the dataset is empty")
        return dataset
    spec = "repeated-random" if dataset is None else dataset
    if not isinstance(spec, (str, Path)):
        raise InputError(f"dataset must be a TokenDataset, a dataset spec or a file path, got {type(dataset).__name__}")
    spec = str(spec)
    if not isinstance(num_prompts, int) or num_prompts < 1:
        raise InputError(f"num_prompts must be at least 1, got {num_prompts!r}")
    seq_len = fit_seq_len(model, seq_len)
    if spec.startswith("repeated-random") and ":period=" not in spec and (not isinstance(seq_len, int)
                                                                         or seq_len < MIN_SEQ_LEN):
        raise InputError(f"seq_len={seq_len} is shorter than two periods of repeated random tokens of at least 2 "
                         f"tokens each: use seq_len >= {MIN_SEQ_LEN}")
    return dataset_for_model(model, spec, seq_len=seq_len, num_prompts=num_prompts, seed=seed)


def shuffled_control(dataset: TokenDataset, seed: int = 0) -> TokenDataset:
    """The same prompts, each one's real tokens permuted (seeded); BOS stays first and padding stays put.

    The control keeps every token and every prompt length; what stands at each position changes.
    The dataset given is not changed.
    """
    generator = torch.Generator().manual_seed(seed + 1)  # not the probe's own seed: a different draw
    tokens = dataset.tokens.clone()
    lengths = dataset.tokens.new_full((len(dataset),), dataset.tokens.shape[1]) if dataset.attention_mask is None \
        else dataset.attention_mask.sum(1)
    start = 1 if dataset.has_bos else 0
    for row, length in enumerate(lengths.tolist()):
        order = torch.randperm(length - start, generator=generator) + start
        tokens[row, start:length] = dataset.tokens[row, order]
    return replace(dataset, tokens=tokens, name=f"{dataset.name}:shuffled",
                   meta={**dataset.meta, "control": "tokens shuffled within each prompt", "control_seed": seed + 1})


def bootstrap_interval(result: CaptureResult, stat: str, n_bootstrap: int = 1000, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile bootstrap interval over prompts of a statistic's mean, (n_layers, n_heads) each end: each
    resample's mean is pooled as `CaptureResult.mean` pools (`headscope.analysis.intervals`)."""
    return intervals.bootstrap_interval(result.sums[stat], result.counts[stat], n_bootstrap, seed, confidence)


def uniform_null(dataset: TokenDataset, stat: str, causal: bool) -> float:
    """The statistic a head with uniform attention over its visible keys would get on these queries:
    each pair (i, j) of the plan contributes 1 / (number of keys query i sees), exactly."""
    plan = make_plans((stat,), Batch(dataset.tokens, dataset.real, dataset.has_bos, causal))[stat]
    if not isinstance(plan, EntryPlan):
        raise InputError(f"{stat} is not an attention mass: no uniform null")
    visible = (plan.query_idx + 1).double() if causal else dataset.real.sum(1)[plan.batch_idx].double()
    count = int(plan.queries.sum())
    return math.nan if count == 0 else float((1 / visible).sum() / count)


def _nulls(model, dataset, control: CaptureResult, roles) -> dict[str, torch.Tensor]:
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    nulls = {}
    for role in roles:
        stat = ROLE_STATISTICS[role]
        if role in CONTENT_ROLES:
            nulls[role] = control.mean(stat)
        else:
            nulls[role] = torch.full(shape, uniform_null(dataset, stat, model.cfg.causal), dtype=torch.float64)
    return nulls


def _copying_candidates(model, dataset, induction: torch.Tensor, threshold: float,
                        distributed: bool | None) -> dict[tuple[int, int], float]:
    from headscope.analysis.detectors import copying_scores

    heads = [(int(l), int(h)) for l, h in (induction >= threshold).nonzero().tolist()]
    if not heads or not model.cfg.has_unembed:
        return {}
    try:
        return copying_scores(model, dataset, heads, distributed=distributed)
    except InputError:  # a dataset with no repeated bigram (natural text can have none): no copying evidence
        return {}


def _judge(layer, head, roles, scores, intervals, nulls, limits, margin, copying) -> HeadRoles:
    """Which roles one head gets, each with its reason; high scores that missed say why."""
    s = {r: float(scores[r][layer, head]) for r in roles}
    iv = {r: (float(intervals[r][0][layer, head]), float(intervals[r][1][layer, head])) for r in roles}
    nu = {r: float(nulls[r][layer, head]) for r in roles}
    held, reasons, rejected = [], {}, {}
    copy = copying.get((layer, head))
    for role in roles:
        if math.isnan(s[role]) or s[role] < limits[role]:
            continue
        lo, hi = iv[role]
        kind = "shuffled control, same positions" if role in CONTENT_ROLES else "uniform attention"
        text = f"{role} {s[role]:.2f} [{lo:.2f}, {hi:.2f}]"
        if lo > nu[role] + margin:
            held.append(role)
            reasons[role] = f"{text} > null {nu[role]:.2f} ({kind})" + _copy_note(role, copy)
        else:
            rejected[role] = (f"{text} >= threshold {limits[role]:.2f}, but its lower bound is not above null "
                              f"{nu[role]:.2f} ({kind}) + margin {margin:.2f}")
    return HeadRoles(layer, head, s, iv, nu, tuple(held), reasons, rejected, copy)


def _copy_note(role: str, copy: float | None) -> str:
    if role != "induction" or copy is None:
        return ""
    verb = "raises" if copy > 0 else "does not raise"
    return f"; {verb} the copied token's logit (direct effect {copy:+.2f})"
