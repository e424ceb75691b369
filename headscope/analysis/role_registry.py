"""Head roles, each defined once: what scores it, which models it applies to, its null, threshold, evidence.

A `Role` names how a head is scored, in exactly one of three ways:

- `statistic`: a capture statistic (a name of `headscope.capture.statistics.STATISTICS`, or a `Statistic`
  object), whose mean over the counted queries of the probe prompts is the score;
- `entries`: a function of a `Batch` giving the entries of the pattern to add up per counted query, as an
  `EntryPlan` or a (query, key) / (batch, query, key) bool detection pattern (what TransformerLens'
  `detect_head` takes); the role's own statistic, named after it, is captured with the built-in ones;
- `score`: a function `score(model, dataset)` of the model's weights or of the probe prompts, giving
  (n_layers, n_heads) scores, or (n_prompts, n_layers, n_heads) per-prompt scores (then the score is
  their mean and has a bootstrap interval, as captured ones have). Roles whose scores come out of one
  computation (one forward pass) share it through `SharedScore`: `classify_heads` runs it once.

Its `null` says what the score is judged against: "uniform" (a head attending uniformly over the keys it
can see, computed exactly on the same queries; attention-mass roles only), "shuffled" (the same head on
the probe prompts with their tokens shuffled within each prompt: for a captured role at the probe's own
positions, for a score role its score on the shuffled prompts: at the probe's own positions when its
function takes a `plan_dataset` keyword, which is then the probe), or None (the threshold alone decides).
`classify_heads`, the role table's JSON and CSV, its figure and the docs all read the roles registered
here; `register_role` adds one, `unregister_role` takes it away. Adding a built-in role is one more entry
in `BUILT_IN_ROLES`. `OPTIONAL_ROLES` are built-in roles known by name (`get_role`) but scored only when
chosen (`choose_roles`, `classify_heads(roles=...)`), because each costs work that every classification
should not pay.

References
----------
Olsson et al. (2022), "In-context Learning and Induction Heads", Transformer Circuits Thread.
Xiao et al. (2024), "Efficient Streaming Language Models with Attention Sinks", ICLR.
Wang et al. (2022), "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2
small", arXiv:2211.00593 (duplicate-token heads).
Clark et al. (2019), "What Does BERT Look At? An Analysis of BERT's Attention", BlackboxNLP.
Kovaleva et al. (2019), "Revealing the Dark Secrets of BERT", EMNLP.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from headscope.capture.statistics import Batch, EntryPlan, Statistic, resolve_statistics
from headscope.errors import InputError

NULLS = ("uniform", "shuffled", None)
NULL_TEXT = {"uniform": "uniform attention", "shuffled": "shuffled control, same positions", None: "no null"}
AUTO = "auto"  # the default null: uniform for an attention mass, none for a score function


@dataclass(frozen=True)
class Role:
    """One head role (see the module docstring): name, one of `statistic` / `entries` / `score`, `threshold`
    (the minimum score; required), `null` ("uniform", "shuffled" or None; default: uniform for a captured
    attention mass, None for a score function), `causal` / `encoder` (which models it applies to),
    `evidence` (what the score measures, in words), `citation` (where the definition comes from) and
    `copying` (check its candidates' direct effect on the copied token's logit, as induction does) and
    `requires` (a function of the model, False when the role cannot be scored on it: no single-token names,
    say; classify then leaves the role out, or refuses it when it was chosen by name) with `requirement`,
    what that check asks for in words (the refusal's reason); `null_reason`: for a role without a null, why
    none fits (the definition and the docs say it beside "no null")."""

    name: str
    statistic: str | Statistic | None = None
    entries: Callable[[Batch], EntryPlan | torch.Tensor] | None = None
    score: Callable | None = None
    threshold: float | None = None
    null: str | None = AUTO
    causal: bool = True
    encoder: bool = True
    evidence: str = ""
    citation: str = ""
    copying: bool = False
    requires: Callable | None = None
    requirement: str = ""
    null_reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise InputError(f"a role's name must be a Python identifier (it names JSON keys and CSV columns), "
                             f"got {self.name!r}")
        given = [kind for kind in ("statistic", "entries", "score") if getattr(self, kind) is not None]
        if len(given) != 1:
            raise InputError(f"role {self.name!r} needs exactly one of statistic, entries or score, got "
                             f"{', '.join(given) or 'none'}")
        if self.score is not None and not callable(self.score) or self.entries is not None and not callable(self.entries):
            raise InputError(f"role {self.name!r}: {given[0]} must be a function")
        if self.null == AUTO:
            object.__setattr__(self, "null", None if self.score is not None else "uniform")
        if self.null not in NULLS:
            raise InputError(f"role {self.name!r}: null must be 'uniform', 'shuffled' or None, got {self.null!r}")
        stat = self.capture_statistic
        if self.null == "uniform" and (stat is None or stat.row is not None):
            raise InputError(f"role {self.name!r}: a uniform null exists only for an attention mass (pairs of "
                             "positions), not for a score function or a whole-row statistic")
        if self.null_reason and self.null is not None:
            raise InputError(f"role {self.name!r}: null_reason says why a role has no null, and this one has one")
        if self.threshold is None:
            raise InputError(f"role {self.name!r} has no threshold: give the minimum score a head needs")
        check_threshold(self, self.threshold)

    @property
    def capture_statistic(self) -> Statistic | None:
        """The statistic captured for this role (None for a score function)."""
        if self.entries is not None:
            return Statistic(self.name, self.entries, causal=self.causal, encoder=self.encoder)
        if self.statistic is not None:
            return resolve_statistics([self.statistic])[0]
        return None

    @property
    def is_mass(self) -> bool:
        """Whether the score is a fraction of attention, in [0, 1]."""
        stat = self.capture_statistic
        return stat is not None and stat.row is None

    @property
    def null_text(self) -> str:
        """The null in words, as reasons and the JSON's meta say it."""
        if self.null == "shuffled" and self.score is not None:
            return "the same score on the shuffled control" + (", same positions" if takes_plan(self.score) else "")
        return NULL_TEXT[self.null]

    def applies(self, causal: bool) -> bool:
        """Whether the role applies to a causal (True) or bidirectional (False) model."""
        return self.causal if causal else self.encoder

    def available(self, model) -> bool:
        """Whether the role applies to `model`: its kind (causal or encoder) and its `requires` check."""
        return self.applies(model.cfg.causal) and (self.requires is None or bool(self.requires(model)))

    def unavailable_reason(self, model) -> str | None:
        """Why the role cannot be scored on `model` (one clause), or None when it can."""
        kind = "causal" if model.cfg.causal else "bidirectional (encoder)"
        if not self.applies(model.cfg.causal):
            return f"it applies to {'encoder' if self.encoder else 'causal'} models only and this model is {kind}"
        if self.requires is not None and not self.requires(model):
            return f"it needs {self.requirement or 'what ' + getattr(self.requires, '__name__', 'its check') + ' checks'}"
        return None

    def describe(self) -> dict:
        """The definition as JSON: what scores it, null, threshold, evidence, citation, models it applies to."""
        source = ("statistic " + self.capture_statistic.name if self.statistic is not None
                  else "detection pattern" if self.entries is not None else "score function")
        null = self.null_text + (f" ({self.null_reason})" if self.null is None and self.null_reason else "")
        return {"scored_by": source, "null": null, "threshold": self.threshold,
                "applies_to": [kind for kind, ok in (("causal", self.causal), ("encoder", self.encoder)) if ok],
                "evidence": self.evidence, "citation": self.citation}


@dataclass(frozen=True)
class SharedScore:
    """A role's score function that is one part of a joint computation: `joint(model, dataset)` returns a dict
    of scores by part, all from one pass over the prompts, and calling the SharedScore returns its `part`.
    `classify_heads` runs each joint function once per dataset and call, and hands every role its part; a
    joint function taking `plan_dataset` gets the probe when the dataset is its shuffled control."""

    joint: Callable
    part: str

    def __call__(self, model, dataset, **plan) -> torch.Tensor:
        return self.joint(model, dataset, **plan)[self.part]


def pool_prompts(values: torch.Tensor) -> torch.Tensor:
    """Per-prompt scores (prompts, n_layers, n_heads) as a score function returns them: unchanged, unless a
    prompt has no value for some head (NaN: no counted query there); then the (n_layers, n_heads) mean
    over the prompts that have one, as a capture pools its queries (and without an interval)."""
    if not values.isnan().any():
        return values
    return values.nan_to_num(0.0).sum(0) / (~values.isnan()).sum(0).clamp(min=1)


def takes_plan(score) -> bool:
    """Whether a score function takes `plan_dataset` (then it scores the control at the probe's positions)."""
    try:
        return "plan_dataset" in inspect.signature(score).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


def check_threshold(role: Role, value) -> float:
    """`value` as the role's threshold: a number, in [0, 1] for an attention mass; else one-line InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"threshold for {role.name} must be a finite number, got {value!r}")
    if role.is_mass and not 0 <= value <= 1:
        raise InputError(f"threshold for {role.name} must be a number in [0, 1] (an attention mass), got {value!r}")
    return float(value)


_REGISTRY: dict[str, Role] = {}
_OPTIONAL: dict[str, Role] = {}  # built-in roles known by name, scored only when chosen (OPTIONAL_ROLES)


def register_role(role: Role, *, replace: bool = False) -> Role:
    """Add `role` to the roles `classify_heads` scores (after those already registered); returns it.

    A second role of the same name is refused unless `replace` (which keeps the first one's place)."""
    if not isinstance(role, Role):
        raise InputError(f"register_role takes a Role, got {type(role).__name__}")
    if role.name in _REGISTRY and not replace:
        raise InputError(f"a role named {role.name!r} is already registered: unregister it first or pass replace=True")
    _REGISTRY[role.name] = role
    return role


def unregister_role(name: str) -> Role:
    """Remove the role `name` from the registry; returns it."""
    if name not in _REGISTRY:
        raise InputError(f"unknown role {name!r}; registered roles: {', '.join(_REGISTRY)}")
    return _REGISTRY.pop(name)


def known_role_names() -> tuple[str, ...]:
    """Every name `get_role` knows: the registered roles, then the optional built-in ones not registered."""
    return (*_REGISTRY, *(name for name in _OPTIONAL if name not in _REGISTRY))


def get_role(name: str) -> Role:
    """The registered role `name`, else the optional built-in role of that name (`OPTIONAL_ROLES`); an
    unknown name is an InputError listing the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _OPTIONAL:
        return _OPTIONAL[name]
    raise InputError(f"unknown role {name!r}; roles: {', '.join(known_role_names())}", parameter="roles")


def choose_roles(model, roles=None) -> tuple[Role, ...]:
    """The roles to score on `model`: None, every registered role that applies to it (its kind and its
    `requires` check; the others are left out); else `roles`, names (registered or optional built-in
    roles) or `Role` objects, in that order. A chosen role that is unknown, named twice or cannot be
    scored on the model is refused in one line, with the reason."""
    if roles is None:
        return tuple(role for role in registered_roles(model.cfg.causal) if role.available(model))
    if isinstance(roles, (str, Role)):
        roles = [roles]
    chosen = []
    for item in roles:
        if not isinstance(item, (str, Role)):
            raise InputError(f"roles are chosen by name or as Role objects, got {type(item).__name__}",
                             parameter="roles")
        role = get_role(item.strip()) if isinstance(item, str) else item
        if role.name in (r.name for r in chosen):
            raise InputError(f"role {role.name} is chosen twice", parameter="roles")
        reason = role.unavailable_reason(model)
        if reason is not None:
            raise InputError(f"role {role.name} cannot be scored on {model.name}: {reason}", parameter="roles")
        chosen.append(role)
    if not chosen:
        raise InputError(f"no role chosen; roles: {', '.join(known_role_names())}", parameter="roles")
    return tuple(chosen)


def registered_roles(causal: bool | None = None) -> tuple[Role, ...]:
    """Every registered role in registration order, or those that apply to a causal (True) or
    bidirectional (False) model."""
    return tuple(role for role in _REGISTRY.values() if causal is None or role.applies(causal))


from headscope.analysis import sink_roles  # noqa: E402  (it builds on Role, defined above)
from headscope.analysis.circuit_roles import CIRCUIT_ROLES  # noqa: E402 (it builds Role objects, defined above)

# Why the sink module's roles have no null (set here: sink_roles.py is another's work). A positional
# norm-weighted score scores the same on a shuffled control, and uniform attention has no norm-weighted
# level that does not depend on the head's own values. induction_norm's null is the shuffled control at
# the probe's positions, as induction's, once its score function takes `plan_dataset`: scored at the
# control's own repeats it would measure the induction mechanism again and refuse every induction head.
_POSITIONAL_NORM = "positional: a shuffled control scores the same; uniform attention has no norm-weighted level"

# Fractions of attention. 0.4 is "the largest single thing the head does" for a one-position role; the
# sink and local roles gather mass over more keys (or from uniform heads early in a row), so they ask more.
BUILT_IN_ROLES = (
    Role("previous_token", statistic="previous_token", threshold=0.4,
         evidence="attention on the previous real token", citation="Olsson et al. (2022)"),
    replace(sink_roles.PREVIOUS_TOKEN_NORM, null_reason=_POSITIONAL_NORM),
    Role("induction", statistic="induction", threshold=0.4, null="shuffled", copying=True,
         evidence="attention on the token after an earlier occurrence of the current one",
         citation="Olsson et al. (2022)"),
    sink_roles.INDUCTION_NORM,
    Role("duplicate_token", statistic="duplicate_token", threshold=0.4, null="shuffled",
         evidence="attention on earlier occurrences of the current token", citation="Wang et al. (2022)"),
    Role("attention_sink", statistic="attention_sink", threshold=0.6,
         evidence="attention on position 0 (BOS / [CLS])", citation="Xiao et al. (2024)"),
    replace(sink_roles.ATTENTION_SINK_NORM, null_reason=_POSITIONAL_NORM),
    replace(sink_roles.ATTENTION_SINK_GU, null_reason="Gu et al.'s definition is the threshold alone"),
    replace(sink_roles.DORMANT, null_reason="first-token mass and output norms, which a shuffled control, BOS "
                                              "first, leaves as they are"),
    Role("self", statistic="current_token", threshold=0.4, evidence="attention on the query's own position",
         citation="Clark et al. (2019)"),
    Role("local", statistic="local", threshold=0.6, evidence="attention on the 3 previous real positions",
         citation="Kovaleva et al. (2019)"),
    Role("next_token", statistic="next_token", threshold=0.4, causal=False,
         evidence="attention on the next token (encoders)", citation="Clark et al. (2019)"),
    Role("sep", statistic="sep", threshold=0.4, causal=False,
         evidence="attention on the last real position, [SEP] (encoders)", citation="Clark et al. (2019)"),
    *CIRCUIT_ROLES,  # copying, negative_copying, successor, name_mover: headscope/analysis/circuit_roles.py
)
for _role in BUILT_IN_ROLES:
    register_role(_role)

from headscope.analysis.copy_suppression import COPY_SUPPRESSION_ROLE  # noqa: E402 (builds a Role)
from headscope.analysis.retrieval import RETRIEVAL_ROLE  # noqa: E402 (it builds a Role, defined above)

# Built-in roles that classify scores only when they are chosen (`classify_heads(roles=...)`): each brings
# its own prompts or forward passes, which every classification should not pay for (see their modules).
OPTIONAL_ROLES = (RETRIEVAL_ROLE, COPY_SUPPRESSION_ROLE)
for _role in OPTIONAL_ROLES:
    _OPTIONAL[_role.name] = _role


def role_catalogue(roles: tuple[Role, ...] | None = None) -> str:
    """A markdown table of `roles` (default: every registered one): name, scored by, null, threshold,
    models, evidence, source. docs/design.md holds the built-in roles' table; a test keeps it current."""
    lines = ["| role | scored by | null | threshold | models | score: ... | source |", "|---|---|---|---|---|---|---|"]
    for role in registered_roles() if roles is None else roles:
        d = role.describe()
        lines.append(f"| {role.name} | {d['scored_by']} | {d['null']} | {role.threshold:g} | "
                     f"{', '.join(d['applies_to'])} | {role.evidence} | {role.citation} |")
    return "\n".join(lines)
