"""Head roles: which attention heads are previous-token, induction, duplicate-token, sink, self, local heads.

`classify_heads` captures per-head statistics (`headscope.capture.statistics`) on a probe dataset and on
a control, and gives a head a role when three things hold:

1. its score (a statistic's mean over the prompts, an attention mass in [0, 1], or a role's own score
   function) is at least the role's threshold (overridable per call);
2. the lower end of its bootstrap 95% interval over prompts exceeds the role's null by `margin`;
3. for induction, that is measured with the same definition as the score.

The roles, their statistics, nulls, thresholds and sources are the ones registered in
`headscope.analysis.role_registry` (`role_catalogue()` prints them; docs/design.md lists the built-in ones);
a role registered there from Python is scored, judged and written like the built-in ones.

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

import math
from dataclasses import replace
from pathlib import Path

import torch

from headscope import distributed as distributed_run
from headscope.analysis import intervals
from headscope.analysis.role_registry import Role, SharedScore, check_threshold, choose_roles, get_role, takes_plan
from headscope.analysis.role_table import HeadRoles, RoleTable
from headscope.capture.datasets import TokenDataset, dataset_for_model, fit_seq_len
from headscope.capture.engine import capture
from headscope.capture.result import CaptureResult
from headscope.capture.statistics import Batch, EntryPlan, make_plans
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from headscope.progress import discard
from headscope.provenance import provenance

DEFAULT_MARGIN = 0.05
CONFIDENCE = intervals.CONFIDENCE
MIN_SEQ_LEN = 4  # two periods of at least two tokens


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
    roles=None,
) -> RoleTable:
    """Give every head of `model` the roles its attention supports (see the module docstring).

    dataset: a `TokenDataset`, a dataset spec (`repeated-random[:period=P]`, a .txt or .jsonl file), or
    None for `num_prompts` repeated-random prompts of `seq_len` tokens (two periods of seq_len // 2; None:
    64, or what fits the model's context).
    Two captures are run: the dataset, and its shuffled control (tokens permuted within each prompt with
    `seed`) scored at the dataset's own target positions; roles with a score function are scored by it. thresholds: per-role minimum scores, over the registered
    roles' own. margin: how far the
    lower end of the bootstrap 95% interval (`n_bootstrap` resamples of the prompts, seeded) must exceed
    the null. A head may hold several roles; a head scoring above a threshold without the role says why
    in `rejected`. Induction candidates get a copying score (`headscope.analysis.detectors`).
    distributed: split the prompts across the processes of a torch.distributed group (None: when there is
    one); every process gets the whole table (see `headscope.distributed`).
    resume: a folder for the two captures' progress files: a rerun with the same model, data and options
    continues where the last stopped, a finished capture included; they are removed at the end.
    max_memory: bytes for each forward pass's activations (default: a share of the free memory, see
    `headscope.capture.capture`); the bootstrap draws its resamples in bounded chunks whatever the prompts.
    roles: the roles to score, names or `Role` objects (`role_registry.choose_roles`; the optional built-in
    ones, such as "retrieval", by name too); None: every registered role that applies to the model. Only
    the captures and score functions the chosen roles need are run, and the table holds only them; a
    chosen role the model cannot be scored on is refused with the reason.

    References
    ----------
    Olsson et al. (2022), "In-context Learning and Induction Heads".
    """
    if not isinstance(model, HookedTransformer):
        raise InputError(f"classify_heads needs a headscope HookedTransformer, got {type(model).__name__}: "
                         "load it with headscope.load_model")
    chosen = roles is not None
    roles = choose_roles(model, roles)
    limits = _check_options(thresholds, margin, n_bootstrap, roles, chosen)
    dataset = _resolve_dataset(model, dataset, seq_len, num_prompts, seed)
    stages = {name: None if resume is None else Path(resume) / f"{name}.progress.safetensors"
              for name in ("probe", "control")}
    if resume is not None:
        try:
            Path(resume).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the resume folder {resume}: {err.strerror}") from err
    options = {"device": device, "progress": progress, "distributed": distributed, "keep_progress": True,
               "max_memory": max_memory}
    scores, intervals, nulls = _evidence(model, dataset, roles, stages, options, n_bootstrap, seed)
    copying = _copying_candidates(model, dataset, roles, scores, limits, distributed)
    group_size = model.cfg.n_heads // model.cfg.kv_heads
    heads = tuple(
        replace(_judge(layer, head, roles, scores, intervals, nulls, limits, margin, copying),
                kv_group=head // group_size)  # K/V are repeat_interleaved: query head h reads K/V head h // size
        for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)
    )
    meta = {"dataset": dataset.name, "dataset_meta": dataset.meta, "seq_len": int(dataset.tokens.shape[1]),
            "num_prompts": len(dataset), "seed": seed, **provenance(model), "n_kv_heads": model.cfg.kv_heads,
            "thresholds": limits, "margin": margin, "n_bootstrap": n_bootstrap, "confidence": CONFIDENCE,
            "nulls": {r.name: r.null_text for r in roles}, "role_definitions": {r.name: r.describe() for r in roles}}
    for path in stages.values():
        discard(path, distributed_run.active(distributed))
    return RoleTable(model.name, model.cfg.n_layers, model.cfg.n_heads, heads, meta)


def _check_options(thresholds, margin, n_bootstrap, roles: tuple[Role, ...], chosen: bool = False
                   ) -> dict[str, float]:
    """The thresholds of `roles`, the given ones checked; with roles chosen by the caller, a threshold for
    another role is refused (it could not be honoured)."""
    limits = {r.name: r.threshold for r in roles}
    by_name = {r.name: r for r in roles}
    for name, value in (thresholds or {}).items():
        if name in limits:
            limits[name] = check_threshold(by_name[name], value)
            continue
        role = get_role(name)
        if chosen:
            raise InputError(f"a threshold is given for {name}, which is not among the chosen roles "
                             f"({', '.join(limits)})")
        check_threshold(role, value)
    if not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise InputError(f"margin must be in [0, 1), got {margin!r}")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 10:
        raise InputError(f"n_bootstrap must be an integer of at least 10, got {n_bootstrap!r}")
    return limits


def _evidence(model, dataset: TokenDataset, roles: tuple[Role, ...], stages: dict, options: dict,
              n_bootstrap: int, seed: int) -> tuple[dict, dict, dict]:
    """Per role: (n_layers, n_heads) scores, interval ends and nulls, from the probe capture, the shuffled
    control (captured at the probe's positions) and the roles' score functions."""
    captured = [r for r in roles if r.score is None]
    control_data = shuffled_control(dataset, seed)
    probe = _capture_for(model, dataset, [r.capture_statistic for r in captured], stages["probe"], options)
    control = _capture_for(model, control_data, [r.capture_statistic for r in captured if r.null == "shuffled"],
                           stages["control"], options, plan_dataset=dataset)
    scores, intervals, nulls = {}, {}, {}
    joint: dict = {"probe": {}, "control": {}}  # each SharedScore's joint result, per dataset, in this call only
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    for role in roles:
        if role.score is None:
            stat = role.capture_statistic.name
            scores[role.name] = probe.mean(stat)
            intervals[role.name] = bootstrap_interval(probe, stat, n_bootstrap, seed)
            null = control.mean(stat) if role.null == "shuffled" else None
        else:
            scores[role.name], intervals[role.name] = _scored(role, model, dataset, n_bootstrap, seed, joint["probe"])
            null = (_scored(role, model, control_data, n_bootstrap, seed, joint["control"], plan_dataset=dataset)[0]
                    if role.null == "shuffled" else None)
        if role.null == "uniform":
            null = torch.full(shape, uniform_null(dataset, role.capture_statistic, model.cfg.causal), dtype=torch.float64)
        nulls[role.name] = torch.full(shape, math.nan, dtype=torch.float64) if null is None else null
    return scores, intervals, nulls


def _capture_for(model, dataset, stats: list, resume, options: dict, plan_dataset=None) -> CaptureResult | None:
    """One capture of `stats`, or None when no role needs one (an empty list would capture every statistic)."""
    if not stats:
        return None
    return capture(model, dataset, stats, plan_dataset=plan_dataset, resume=resume, **options)


def _scored(role: Role, model, dataset: TokenDataset, n_bootstrap: int, seed: int,
            joint: dict, plan_dataset: TokenDataset | None = None) -> tuple[torch.Tensor, tuple]:
    """A score role's (n_layers, n_heads) scores and interval ends (NaN unless it scores each prompt). A
    `SharedScore`'s joint computation runs once per `joint` dict (one dataset of one call) and is kept there.
    plan_dataset (the probe, when `dataset` is its control) goes to a score function that takes it."""
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    score = role.score
    if isinstance(score, SharedScore):
        if score.joint not in joint:
            plan = {"plan_dataset": plan_dataset} if plan_dataset is not None and takes_plan(score.joint) else {}
            joint[score.joint] = score.joint(model, dataset, **plan)
        values = joint[score.joint][score.part]
    else:
        plan = {"plan_dataset": plan_dataset} if plan_dataset is not None and takes_plan(score) else {}
        values = score(model, dataset, **plan)
    values = torch.as_tensor(values, dtype=torch.float64).cpu()
    if values.shape == shape:
        return values, (torch.full(shape, math.nan, dtype=torch.float64),) * 2
    if values.dim() == 3 and values.shape[1:] == shape and values.shape[0] == len(dataset):
        return values.mean(0), intervals.bootstrap_interval(values, None, n_bootstrap, seed, CONFIDENCE)
    raise InputError(f"role {role.name}: its score function gave shape {tuple(values.shape)}, not {shape} "
                     f"(n_layers, n_heads) or ({len(dataset)}, *{shape}) per prompt")


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


def uniform_null(dataset: TokenDataset, stat, causal: bool) -> float:
    """The statistic `stat` (a name or a `Statistic`) a head with uniform attention over its visible keys
    would get on these queries: each pair (i, j) of the plan contributes 1 / (keys query i sees), exactly."""
    plan = next(iter(make_plans((stat,), Batch(dataset.tokens, dataset.real, dataset.has_bos, causal)).values()))
    if not isinstance(plan, EntryPlan):
        raise InputError(f"{getattr(stat, 'name', stat)} is not an attention mass: no uniform null")
    visible = (plan.query_idx + 1).double() if causal else dataset.real.sum(1)[plan.batch_idx].double()
    count = int(plan.queries.sum())
    return math.nan if count == 0 else float((1 / visible).sum() / count)


def _copying_candidates(model, dataset, roles: tuple[Role, ...], scores: dict, limits: dict,
                        distributed: bool | None) -> dict[tuple[int, int], float]:
    """The direct effect on the copied token of every head scoring above threshold on a `copying` role."""
    from headscope.analysis.detectors import copying_scores

    above = [scores[r.name] >= limits[r.name] for r in roles if r.copying]
    if not above or not model.cfg.has_unembed:
        return {}
    heads = [(int(l), int(h)) for l, h in torch.stack(above).any(0).nonzero().tolist()]
    if not heads:
        return {}
    try:
        return copying_scores(model, dataset, heads, distributed=distributed)
    except InputError:  # a dataset with no repeated bigram (natural text can have none): no copying evidence
        return {}


def _judge(layer, head, roles: tuple[Role, ...], scores, intervals, nulls, limits, margin, copying) -> HeadRoles:
    """Which roles one head gets, each with its reason; high scores that missed say why.

    Against a null the lower end of the interval must clear it by `margin` (the score itself when the
    role has no interval); with no null the threshold alone decides."""
    names = [r.name for r in roles]
    s = {r: _number(scores[r][layer, head]) for r in names}
    iv = {r: (_number(intervals[r][0][layer, head]), _number(intervals[r][1][layer, head])) for r in names}
    nu = {r: _number(nulls[r][layer, head]) for r in names}
    held, reasons, rejected = [], {}, {}
    copy = copying.get((layer, head))
    for role in roles:
        name = role.name
        if math.isnan(s[name]) or s[name] < limits[name]:
            continue
        lo, hi = iv[name]
        text = f"{name} {s[name]:.2f}" + ("" if math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]")
        if role.null is None:
            held.append(name)
            reasons[name] = f"{text} >= threshold {limits[name]:.2f} ({role.null_text})"
        elif (s[name] if math.isnan(lo) else lo) > nu[name] + margin:
            held.append(name)
            reasons[name] = f"{text} > null {nu[name]:.2f} ({role.null_text})" + _copy_note(role, copy)
        else:
            bound = "score" if math.isnan(lo) else "lower bound"
            rejected[name] = (f"{text} >= threshold {limits[name]:.2f}, but its {bound} is not above null "
                              f"{nu[name]:.2f} ({role.null_text}) + margin {margin:.2f}")
    return HeadRoles(layer, head, s, iv, nu, tuple(held), reasons, rejected, copy)


def _number(value: torch.Tensor) -> float:
    """A float, every NaN the one `math.nan` that `RoleTable.from_json` reads a null back as (NaN != NaN, so
    a table with a no-null role would otherwise not equal its own JSON read back)."""
    value = float(value)
    return math.nan if math.isnan(value) else value


def _copy_note(role: Role, copy: float | None) -> str:
    if not role.copying or copy is None:
        return ""
    verb = "raises" if copy > 0 else "does not raise"
    return f"; {verb} the copied token's logit (direct effect {copy:+.2f})"
