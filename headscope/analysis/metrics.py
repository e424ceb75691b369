"""Ablation metrics: what an ablated forward pass is scored by, one value per prompt.

"loss" (mean next-token loss), "induction-loss" (loss on the repeated half of repeated-random prompts),
"kl" (KL divergence from the clean next-token distribution), "logit-diff" (logit of the answer minus the
wrong answer at the last position, for prompt pairs from a JSONL file), `mean_token_loss` over positions
of your choosing, or any callable `metric(logits, tokens, real, clean_logits) -> (prompts,)`.

The built-in metrics are `Metric`s that can also be computed from the final hidden states, unembedding
only the positions (or vocabulary columns) they read: in a sweep of a model with a large vocabulary the
full logits of every variant cost more than the layers rerun.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from headscope.capture.datasets import TokenDataset, from_texts
from headscope.errors import InputError
from headscope.model.transformer import token_losses

MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _token_losses_from_hidden(model, hidden: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor,
                              chunk_bytes: int = 1 << 26) -> torch.Tensor:
    """`token_losses` at the predicting positions `keep` (batch, pos - 1) only, zero elsewhere.

    Only those rows of the final hidden states are unembedded, a chunk at a time, so the
    (batch, pos, vocabulary) logits never exist: in a sweep that tensor costs more than the layers.
    """
    where = keep.nonzero(as_tuple=True)
    rows, targets = hidden[:, :-1][where], tokens[:, 1:][where]
    step = max(1, chunk_bytes // (4 * model.cfg.d_vocab))
    losses = torch.zeros(keep.shape, dtype=torch.float32, device=hidden.device)
    parts = []
    for start in range(0, len(rows), step):
        logits = model.unembed_hidden(rows[start : start + step]).float()
        target = logits.gather(-1, targets[start : start + step, None]).squeeze(-1)
        parts.append(torch.logsumexp(logits, -1) - target)
    if parts:
        losses[where] = torch.cat(parts)
    return losses


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    keep = keep.to(values.dtype)
    return (values * keep).sum(-1) / keep.sum(-1).clamp(min=1)


def _last_real(real: torch.Tensor) -> torch.Tensor:
    return real.long().sum(1) - 1


@dataclass(frozen=True)
class Metric:
    """A metric of a forward pass, one value per prompt.

    Called as `metric(logits, tokens, real, clean_logits)`, the form any callable metric takes. The built-in
    metrics also have `on_hidden(model, hidden, tokens, real)`: the same value from the final hidden states,
    unembedding only the positions (for logit-diff, only the two vocabulary columns) that the metric reads.
    Ablation runs use it when it is there; most of a sweep's time otherwise goes into logits nobody reads.
    """

    name: str
    on_logits: MetricFn
    on_hidden: Callable[..., torch.Tensor] | None = None

    def __call__(self, logits, tokens, real, clean_logits) -> torch.Tensor:
        return self.on_logits(logits, tokens, real, clean_logits)

    @property
    def reads(self) -> str:
        """The forward pass's return_type this metric takes: "hidden" or "logits"."""
        return "logits" if self.on_hidden is None else "hidden"

    def of(self, model, output, tokens, real, clean_output) -> torch.Tensor:
        """The metric of a forward pass that returned `self.reads`."""
        if self.on_hidden is None:
            return self.on_logits(output, tokens, real, clean_output)
        return self.on_hidden(model, output, tokens, real)


def mean_token_loss(name: str, predicted_kept: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Metric:
    """Mean next-token loss over the predicting positions that `predicted_kept(tokens, real)` selects.

    `predicted_kept` returns a (prompts, pos - 1) bool mask: entry i says whether the prediction of token
    i + 1 counts. A metric of your own over some positions, as fast as the built-in ones.
    """

    def on_logits(logits, tokens, real, clean_logits):
        return _masked_mean(token_losses(logits, tokens), predicted_kept(tokens, real))

    def on_hidden(model, hidden, tokens, real):
        keep = predicted_kept(tokens, real)
        return _masked_mean(_token_losses_from_hidden(model, hidden, tokens, keep), keep)

    return Metric(name, on_logits, on_hidden)


def _kl(logits, tokens, real, clean_logits):
    clean = clean_logits.float().log_softmax(-1)
    kl = (clean.exp() * (clean - logits.float().log_softmax(-1))).sum(-1)
    return _masked_mean(kl, real)


METRICS: dict[str, Metric] = {"loss": mean_token_loss("loss", lambda tokens, real: real[:, 1:]),
                              "kl": Metric("kl", _kl)}


def induction_loss_metric(dataset: TokenDataset) -> Metric:
    """Loss on the predictable part of the repeated periods of repeated-random prompts."""
    period = dataset.meta.get("period")
    if dataset.name != "repeated-random" or not period:
        raise InputError("induction-loss needs the repeated-random dataset (its period says what repeats)")
    first = 1 if dataset.has_bos else 0

    def repeated(tokens, real):
        predicted = torch.arange(1, tokens.shape[1], device=tokens.device)  # position of each predicted token
        return (predicted >= first + period + 1).expand(tokens.shape[0], -1) & real[:, 1:]

    return mean_token_loss("induction-loss", repeated)


def logit_diff_metric(answers: torch.Tensor, wrongs: torch.Tensor) -> Metric:
    """logit(answer) - logit(wrong) at each prompt's last real position."""

    def on_logits(logits, tokens, real, clean_logits):
        rows = torch.arange(len(tokens))
        last = logits[rows, _last_real(real)].float()
        return last[rows, answers.to(logits.device)] - last[rows, wrongs.to(logits.device)]

    def on_hidden(model, hidden, tokens, real):
        last = hidden[torch.arange(len(tokens)), _last_real(real)]  # (prompts, d_model)
        answer = model.unembed_hidden(last, columns=answers.to(hidden.device))
        wrong = model.unembed_hidden(last, columns=wrongs.to(hidden.device))
        return (answer - wrong).float()

    return Metric("logit-diff", on_logits, on_hidden)


def pairs_dataset(path, tokenizer) -> tuple[TokenDataset, torch.Tensor, torch.Tensor]:
    """Prompts from a JSONL file of {"prompt", "answer", "wrong"}; each answer must be one token."""
    path = Path(path)
    if tokenizer is None:
        raise InputError("logit-diff needs a model with a tokenizer")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read pairs file {path}: {err}") from err
    if not records:
        raise InputError(f"pairs file {path} is empty")
    answers, wrongs = [], []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "answer", "wrong")):
            raise InputError(f'{path} line {number} needs string fields "prompt", "answer" and "wrong"')
        for key, out in (("answer", answers), ("wrong", wrongs)):
            ids = tokenizer.encode(record[key], prepend_bos=False)
            if len(ids) != 1:
                raise InputError(f"{path} line {number}: {key} {record[key]!r} is {len(ids)} tokens, not one")
            out.append(ids[0])
    dataset = from_texts([r["prompt"] for r in records], tokenizer, name=f"pairs:{path.name}")
    return dataset, torch.tensor(answers), torch.tensor(wrongs)


def resolve_metric(metric: str | MetricFn | Metric, dataset: TokenDataset) -> Metric:
    """A metric given by name (for `dataset`), as a callable, or as a `Metric`."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric)
    if metric == "induction-loss":
        return induction_loss_metric(dataset)
    if metric == "logit-diff":
        raise InputError("logit-diff needs the answer and wrong token of every prompt: pass "
                         "logit_diff_metric(answers, wrongs) (or a prompt-pairs file on the command line)")
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}: use loss, induction-loss, kl, logit-diff or a callable")
    return METRICS[metric]
