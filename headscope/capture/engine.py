"""The capture engine: stream a dataset through a model and accumulate per-head statistics.

Each attention layer's fused call is replaced, for the duration of a capture, by one that also returns
the log-sum-exp and the averages of the extra value columns the statistics need (see `kernels.py`); the
entries a statistic needs are then exp(scale * q_i . k_j - lse_i). No pattern is ever formed on this
path. `method="explicit"` instead reads the full pattern at `hook_pattern` and is the reference the
tests hold the fused path to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from headscope import distributed as distributed_run
from headscope.capture.budget import choose_batch_size, is_out_of_memory
from headscope.capture.datasets import TokenDataset, real_mask
from headscope.capture.kernels import fused_attention_with_lse
from headscope.capture.recorder import PatternRecorder
from headscope.capture.result import CaptureResult
from headscope.capture.rows import FusedContext
from headscope.capture.statistics import Batch, EntryPlan, RowPlan, Statistic, make_plans, resolve_statistics
from headscope.errors import InputError
from headscope.heads import parse_heads
from headscope.model.attention import Attention
from headscope.model.transformer import HookedTransformer
from headscope.progress import ProgressFile, rank_path, run_fingerprint
from headscope.provenance import provenance

PAIR_CHUNK = 1 << 15  # pairs gathered at once: memory is PAIR_CHUNK x heads x d_head


class _BatchSums:
    """Per-prompt sums (batch, layer, head) of every statistic for one batch, and the patterns it records."""

    def __init__(self, plans: dict, n_prompts: int, n_layers: int, n_heads: int, device: torch.device,
                 start: int = 0, recorder: PatternRecorder | None = None, lengths: torch.Tensor | None = None) -> None:
        self.plans = plans
        self.start = start
        self.recorder = recorder
        self.lengths = lengths
        self.sums = {n: torch.zeros(n_prompts, n_layers, n_heads, dtype=torch.float64, device=device)
                     for n in plans}

    def add_entries(self, name: str, layer: int, batch_idx: torch.Tensor, values: torch.Tensor) -> None:
        self.sums[name][:, layer].index_add_(0, batch_idx, values.double())

    def add_rows(self, name: str, layer: int, rows: torch.Tensor, queries: torch.Tensor) -> None:
        """rows (batch, head, pos): summed over the counted queries only (others may be NaN)."""
        kept = torch.where(queries[:, None, :], rows.double(), 0.0)
        self.sums[name][:, layer] += kept.sum(-1)

    def record(self, layer: int, pattern_of) -> None:
        """Hand the recorder the patterns of its heads in this layer; `pattern_of(row, head)` forms one."""
        if self.recorder is None or not self.recorder.heads_in(layer):
            return
        for row in self.recorder.wanted(self.start, self.start + len(self.lengths)):
            for head in self.recorder.heads_in(layer):
                length = int(self.lengths[row])
                self.recorder.add(layer, head, self.start + row, pattern_of(row, head), length)


def _entries(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, plan: EntryPlan, scale: float,
             window: int | None = None) -> torch.Tensor:
    """A[b, h, i, j] for the plan's pairs, (n_pairs, head), from q (b, pos, head, d), k (b, pos, head, d).

    Plans name only causal pairs of real tokens; a local layer's `window` also hides pairs i - j >= window.
    """
    out = []
    for start in range(0, plan.batch_idx.numel(), PAIR_CHUNK):
        b, i, j = (t[start : start + PAIR_CHUNK] for t in (plan.batch_idx, plan.query_idx, plan.key_idx))
        scores = (q[b, i].float() * k[b, j].float()).sum(-1) * scale  # (pairs, head)
        values = (scores - lse[b, :, i]).exp()
        out.append(values if window is None else torch.where((i - j < window)[:, None], values, 0.0))
    return torch.cat(out) if out else q.new_zeros(0, q.shape[2], dtype=torch.float32)


def _fused_kernel(sums: _BatchSums, layer: int):
    """The attention kernel installed on one layer: output z, plus that layer's statistics.

    Each row statistic with a fused form appends its columns to the values of the one fused call and
    finishes from what attention made of them; one without is computed from rows rebuilt from the lse.
    """
    rows = {name: plan for name, plan in sums.plans.items() if isinstance(plan, RowPlan)}

    def kernel(attn: Attention, q, k, v, bias):
        d = v.shape[-1]
        k_all = k.repeat_interleave(attn.group_size, dim=2)  # (batch, pos, head, d)
        qh, kh = q.transpose(1, 2), k_all.transpose(1, 2)  # (batch, head, pos, d)
        vh = v.repeat_interleave(attn.group_size, dim=2).transpose(1, 2)
        position = torch.arange(q.shape[1], device=q.device, dtype=torch.float32)
        ctx = FusedContext(qh, kh, bias, attn.cfg.causal, attn.cfg.scale, position)
        columns, spans = [vh], {}
        for name, plan in rows.items():
            if plan.row.fused is not None:
                extra = plan.row.fused.columns(ctx)
                start = sum(c.shape[-1] for c in columns)
                spans[name] = (start, start + extra.shape[-1])
                columns.append(extra.to(q.dtype))
        out, lse = fused_attention_with_lse(qh, kh, torch.cat(columns, -1), bias, ctx.causal, ctx.scale)
        out, lse, mass = _with_sinks(attn, out, lse)
        ctx = ctx.after_call(lse, mass)
        for name, plan in rows.items():
            attended = out[..., slice(*spans[name])] if name in spans else None
            sums.add_rows(name, layer, plan.row.on_fused_path(ctx, attended), plan.queries)
        for name, plan in sums.plans.items():
            if isinstance(plan, EntryPlan):
                sums.add_entries(name, layer, plan.batch_idx, _entries(q, k_all, lse, plan, ctx.scale, attn.window))
        sums.record(layer, lambda row, head: _pattern_of(qh, kh, lse, bias, ctx.causal, ctx.scale, row, head))
        return out[..., :d].transpose(1, 2).to(q.dtype)

    return kernel


def _with_sinks(attn: Attention, out: torch.Tensor, lse: torch.Tensor):
    """Fold a layer's sink logits into a call over the real keys: (out, lse, mass of the real keys).

    With a sink logit s per head the softmax has one more term, so lse' = logaddexp(lse, s), every entry
    exp(score - lse') and every average over real keys shrinks by mass = exp(lse - lse') (the sink's value
    is zero). Rows of the pattern then sum to `mass`, as at `hook_pattern`. Without sinks: mass 1.
    """
    if not attn.cfg.attn_sinks:
        return out, lse, 1.0
    total = torch.logaddexp(lse, attn.sinks.float()[None, :, None])
    mass = (lse - total).exp()
    return out * mass[..., None].to(out.dtype), total, mass


def _pattern_of(qh, kh, lse, bias, causal, scale, row: int, head: int) -> torch.Tensor:
    """One head's (query, key) pattern of one prompt, exp(scores - lse): the only pattern ever formed."""
    scores = (qh[row, head].float() @ kh[row, head].float().T) * scale
    n_pos = scores.shape[-1]
    if bias is not None:
        scores = scores + bias[min(row, bias.shape[0] - 1), 0].float()
    elif causal:
        allowed = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    return (scores - lse[row, head, :, None]).exp()


def _explicit_hook(sums: _BatchSums, layer: int):
    """The reference: every statistic read off the full pattern at hook_pattern."""

    def hook(pattern: torch.Tensor, hook) -> None:
        p = pattern.float()
        position = torch.arange(p.shape[-1], device=p.device, dtype=torch.float32)
        for name, plan in sums.plans.items():
            if isinstance(plan, EntryPlan):
                values = p[plan.batch_idx, :, plan.query_idx, plan.key_idx]  # (pairs, head)
                sums.add_entries(name, layer, plan.batch_idx, values)
            else:
                sums.add_rows(name, layer, plan.row.explicit(p, position), plan.queries)
        sums.record(layer, lambda row, head: p[row, head])

    return hook


def statistics_from_patterns(
    patterns: list[torch.Tensor], dataset: TokenDataset, stats: list | tuple, causal: bool = True,
) -> CaptureResult:
    """The statistics of full patterns someone already has (one (prompts, head, pos, pos) per layer), e.g.
    TransformerLens' `run_with_cache` of `hook_pattern`: the same definitions as `capture`, computed on
    the device of the first pattern (where the model ran); the result is on the CPU."""
    names = resolve_statistics(list(stats))
    device = patterns[0].device
    tokens = dataset.tokens.to(device)
    real = real_mask(tokens, None if dataset.attention_mask is None else dataset.attention_mask.to(device))
    plans = make_plans(names, Batch(tokens, real, dataset.has_bos, causal))
    sums = _BatchSums(plans, len(dataset), len(patterns), patterns[0].shape[1], device)
    for layer, pattern in enumerate(patterns):
        _explicit_hook(sums, layer)(pattern.to(device), None)
    return CaptureResult({n: s.cpu() for n, s in sums.sums.items()},
                         {n: plan.queries.sum(1).cpu() for n, plan in plans.items()},
                         {"method": "from_patterns", "n_prompts": len(dataset), "seq_len": dataset.tokens.shape[1]})


@contextlib.contextmanager
def _installed(model: HookedTransformer, sums: _BatchSums, method: str) -> Iterator[None]:
    # Soft-capped scores (Gemma 2) have no fused kernel: the model takes its explicit path, and the
    # statistics are read off that pattern whatever the method.
    if method == "explicit" or model.cfg.attn_softcap is not None:
        hooks = [(f"blocks.{layer}.attn.hook_pattern", _explicit_hook(sums, layer)) for layer in range(len(model.blocks))]
        with model.hooks(hooks):
            yield
        return
    for layer, block in enumerate(model.blocks):
        block.attn.kernel = _fused_kernel(sums, layer)
    try:
        yield
    finally:
        for block in model.blocks:
            block.attn.kernel = None


def _capture_batch(model, tokens, mask, dataset, names, method, start, recorder, plan_tokens=None):
    real = real_mask(tokens, mask)
    batch = Batch(tokens if plan_tokens is None else plan_tokens, real, dataset.has_bos, model.cfg.causal)
    plans = make_plans(names, batch)
    lengths = real.sum(1)
    sums = _BatchSums(plans, tokens.shape[0], model.cfg.n_layers, model.cfg.n_heads, tokens.device,
                      start, recorder, lengths)
    if recorder is not None:
        for row in recorder.wanted(start, start + tokens.shape[0]):
            recorder.add_tokens(start + row, tokens[row], int(lengths[row]))
    with torch.no_grad(), _installed(model, sums, method):
        model(tokens, attention_mask=mask, return_type=None)
    counts = {n: plan.queries.sum(1).cpu() for n, plan in plans.items()}
    return {n: s.cpu() for n, s in sums.sums.items()}, counts


def capture(
    model: HookedTransformer,
    dataset: TokenDataset,
    stats: list | tuple | None = None,
    *,
    batch_size: int | None = None,
    max_memory: int | None = None,
    device: str | torch.device | None = None,
    method: str = "fused",
    patterns: list[str] | str | None = None,
    pattern_prompts: list[int] | None = None,
    patterns_out: str | Path | None = None,
    resume: str | Path | None = None,
    save_every_s: float = 30.0,
    plan_dataset: TokenDataset | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    keep_progress: bool = False,
) -> CaptureResult:
    """Per-head statistics of `model` over every prompt of `dataset`, and patterns of chosen heads.

    stats: names from `headscope.capture.statistics.STATISTICS` (or their aliases) and `Statistic` objects
    (default: every built-in one that applies to the model).
    batch_size: prompts per forward pass; by default the largest that fits `max_memory` bytes (default:
    a share of the free memory of the device). method: "fused" (no pattern is formed) or "explicit"
    (the reference, from full patterns). On CUDA an out-of-memory error halves the batch and retries.
    patterns: heads ("L5H1") whose full patterns are kept for `pattern_prompts` (default: prompt 0);
    they are returned in `result.patterns` and written to `patterns_out` if given.
    resume: a progress file; partial sums are saved there every `save_every_s` seconds, and a run with the
    same model, tokens, statistics and method continues after the prompts it holds. Removed at the end,
    unless `keep_progress` (a stage of a longer run, which removes it with `headscope.progress.discard`).
    plan_dataset: where the statistics look is read from these tokens (same shape) while the model runs on
    `dataset`'s: a control that keeps the positions a role would attend to but not what stands there.
    distributed: split the prompts across the processes of the initialised torch.distributed group (None:
    when there is one of several processes). Every process passes the same dataset and gets the whole
    result; each resumes its own shard from `resume` with `.rankRofW` before the suffix, and keeps that
    file until every shard is done, so a rerun after a failure recounts nothing that was finished.
    """
    names = _check_request(model, dataset, stats, method, plan_dataset)
    recorder = _make_recorder(model, dataset, patterns, pattern_prompts)
    if device is not None:
        model.to(device)
    fingerprint = run_fingerprint(model, dataset, plan=None if plan_dataset is None else plan_dataset.digest(),
                                  stats=[stat.name for stat in names], method=method)
    split = distributed_run.active(distributed)
    rows = distributed_run.shard(len(dataset)) if split else range(len(dataset))
    progress_file = ProgressFile(rank_path(resume, split), f"{fingerprint} prompts {rows.start}-{rows.stop}",
                                 save_every_s, keep_finished=split or keep_progress)
    processes = distributed_run.world_size() if split else 1
    if split:
        if len(dataset) < processes:
            raise InputError(f"the dataset has {len(dataset)} prompts for {processes} processes: give every "
                             "process at least one prompt")
        distributed_run.check_same("model, dataset or statistics", fingerprint)
    shards = distributed_run.gather(lambda: _capture_rows(
        model, dataset, names, method, rows, batch_size, max_memory, recorder, plan_dataset,
        progress and distributed_run.is_writer(), progress_file), split)
    parts, resumed = [part for part, _, _ in shards], sum(count for _, count, _ in shards)
    if recorder is not None:
        _record_skipped_prompts(model, dataset, names, method, recorder)
    meta = {"model": model.name, "dataset": dataset.name, "dataset_meta": dataset.meta, "n_prompts": len(dataset),
            "seq_len": dataset.tokens.shape[1], "method": method, "processes": processes,
            "resumed_prompts": resumed,
            "oom_halvings": sum(halvings for _, _, halvings in shards),  # times a batch was halved after OOM
            "torch_version": torch.__version__, **provenance(model)}
    result = CaptureResult.concat(parts, meta)
    if not keep_progress:
        progress_file.remove()
    if recorder is not None:
        if patterns_out is not None and distributed_run.is_writer():
            recorder.save(patterns_out, meta)
        result.patterns = recorder.result(meta)
    return result


def _check_request(model, dataset: TokenDataset, stats, method: str, plan_dataset) -> tuple[Statistic, ...]:
    """The statistics to compute, after checking the method, the dataset and the prompts' length."""
    if method not in ("fused", "explicit"):
        raise InputError(f"unknown capture method {method!r}: use fused or explicit")
    names = resolve_statistics(stats, model.cfg.causal)
    if len(dataset) == 0:
        raise InputError("the dataset is empty")
    if plan_dataset is not None and plan_dataset.tokens.shape != dataset.tokens.shape:
        raise InputError(f"plan_dataset shape {tuple(plan_dataset.tokens.shape)} != dataset shape "
                         f"{tuple(dataset.tokens.shape)}")
    n_pos = dataset.tokens.shape[1]
    if n_pos > model.cfg.n_ctx:
        raise InputError(f"prompts of {n_pos} tokens are longer than the model's context of {model.cfg.n_ctx}: "
                         "use a shorter seq_len", parameter="seq_len")
    return names


def _capture_rows(model, dataset, names, method, rows: range, batch_size, max_memory, recorder, plan_dataset,
                  progress: bool, progress_file: ProgressFile) -> tuple[CaptureResult, int, int]:
    """The prompts `rows` (a contiguous range), continued from the progress file: their result, how
    many prompts the file already held, and how many times the batch was halved after running out of memory."""
    device, n_pos = model.device, dataset.tokens.shape[1]
    if batch_size is None:
        batch_size = choose_batch_size(model.cfg, n_pos, len(rows), max_memory, device, method,
                                       dtype_size=model.embed.W_E.element_size(),
                                       padded=dataset.attention_mask is not None)
    saved = progress_file.load()
    done = None if saved is None else CaptureResult.from_tensors(saved[0], saved[1]["statistics"])
    parts = [done] if done is not None else []
    resumed = 0 if done is None else done.n_prompts
    start, halvings = rows.start + resumed, 0
    bar = tqdm(total=len(rows) * n_pos, initial=resumed * n_pos, unit="tok", unit_scale=True,
               disable=not progress, desc="capture")
    while start < rows.stop:
        stop = min(start + batch_size, rows.stop)
        tokens = dataset.tokens[start:stop].to(device)
        mask = None if dataset.attention_mask is None else dataset.attention_mask[start:stop].to(device)
        plan_tokens = None if plan_dataset is None else plan_dataset.tokens[start:stop].to(device)
        try:
            sums, counts = _capture_batch(model, tokens, mask, dataset, names, method, start, recorder, plan_tokens)
        except RuntimeError as err:
            if not is_out_of_memory(err) or batch_size == 1:
                raise _out_of_memory_error(err, n_pos) if is_out_of_memory(err) else err
            sums = None
        if sums is None:
            # Out here, not in the handler: the traceback holds the failed attempt's tensors until it ends.
            # (A no-op when CUDA was never initialised.)
            batch_size //= 2
            halvings += 1
            torch.cuda.empty_cache()
            continue
        parts.append(CaptureResult(sums, counts))
        bar.update((stop - start) * n_pos)
        start = stop
        progress_file.save(lambda: (CaptureResult.concat(parts).tensors(), {"statistics": [stat.name for stat in names]}),
                           final=start == rows.stop)
    bar.close()
    return CaptureResult.concat(parts), resumed, halvings


def _make_recorder(model, dataset, patterns, pattern_prompts) -> PatternRecorder | None:
    if not patterns:
        return None
    heads = parse_heads(patterns, model.cfg.n_layers, model.cfg.n_heads)
    prompts = [0] if pattern_prompts is None else list(pattern_prompts)
    bad = [p for p in prompts if not 0 <= p < len(dataset)]
    if bad:
        raise InputError(f"prompt {bad[0]} does not exist: the dataset has {len(dataset)} prompts")
    return PatternRecorder(heads, prompts)


def _record_skipped_prompts(model, dataset, names, method, recorder: PatternRecorder) -> None:
    """Prompts a resumed run skipped still get their patterns: one extra pass over just those."""
    for prompt in [p for p in recorder.prompts if p not in recorder.tokens]:
        mask = None if dataset.attention_mask is None else dataset.attention_mask[prompt : prompt + 1]
        tokens = dataset.tokens[prompt : prompt + 1].to(model.device)
        _capture_batch(model, tokens, None if mask is None else mask.to(model.device), dataset, names, method,
                       prompt, recorder)


def _out_of_memory_error(err: Exception, n_pos: int) -> InputError:
    return InputError(f"out of memory with one prompt of {n_pos} tokens: use a shorter seq_len, a smaller model "
                      "dtype, or the CPU", parameter="seq_len")
