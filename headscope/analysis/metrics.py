"""Ablation metrics: what an ablated forward pass is scored by, one value per prompt.

"loss" (mean next-token loss), "induction-loss" (loss on the repeated half of repeated-random prompts),
"kl" (KL divergence from the clean next-token distribution), "logit-diff" (logit of the answer minus the
wrong answer at the last position, for prompt pairs from a JSONL file), `mean_token_loss` over positions
of your choosing, or any callable `metric(logits, tokens, real, clean_logits) -> (prompts,)`.

Metrics of prompt pairs (`pair_metric`, read at each prompt's last real position): "logit-diff",
"normalized-logit-diff" (0 = the corrupted run, 1 = the clean run), "answer-prob", "loss" (the answer's
loss, -log p(answer)) and "kl" (KL divergence of the clean run's next-token distribution from this one's).
Encoders have no logits: "cosine" scores a pass by the cosine similarity of its mean-pooled final hidden
state to the clean run's.

The built-in metrics are `Metric`s that can also be computed from the final hidden states, unembedding
only the positions (or vocabulary columns) they read: in a sweep of a model with a large vocabulary the
full logits of every variant cost more than the layers rerun.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from headscope.capture.datasets import TokenDataset
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
    metrics also have `on_hidden(model, hidden, tokens, real, clean_hidden)`: the same value from the final
    hidden states (and the clean run's, for metrics that compare with it),
    unembedding only the positions (for logit-diff, only the two vocabulary columns) that the metric reads.
    Ablation runs use it when it is there; most of a sweep's time otherwise goes into logits nobody reads.
    `needs_logits`: whether it reads next-token logits (an encoder has none); False for a metric of the
    hidden states alone, as the cosine metric.
    """

    name: str
    on_logits: MetricFn
    on_hidden: Callable[..., torch.Tensor] | None = None
    needs_logits: bool = True

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
        return self.on_hidden(model, output, tokens, real, clean_output)


def mean_token_loss(name: str, predicted_kept: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Metric:
    """Mean next-token loss over the predicting positions that `predicted_kept(tokens, real)` selects.

    `predicted_kept` returns a (prompts, pos - 1) bool mask: entry i says whether the prediction of token
    i + 1 counts. A metric of your own over some positions, as fast as the built-in ones.
    """

    def on_logits(logits, tokens, real, clean_logits):
        return _masked_mean(token_losses(logits, tokens), predicted_kept(tokens, real))

    def on_hidden(model, hidden, tokens, real, clean_hidden=None):
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

    def on_hidden(model, hidden, tokens, real, clean_hidden=None):
        last = hidden[torch.arange(len(tokens)), _last_real(real)]  # (prompts, d_model)
        answer = model.unembed_hidden(last, columns=answers.to(hidden.device))
        wrong = model.unembed_hidden(last, columns=wrongs.to(hidden.device))
        return (answer - wrong).float()

    return Metric("logit-diff", on_logits, on_hidden)


def resolve_metric(metric: str | MetricFn | Metric, dataset: TokenDataset) -> Metric:
    """A metric given by name (for `dataset`), as a callable, or as a `Metric`."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric)
    if metric == "induction-loss":
        return induction_loss_metric(dataset)
    if metric == "cosine":
        return COSINE
    if metric == "logit-diff":
        raise InputError("logit-diff needs the answer and wrong token of every prompt: pass "
                         "logit_diff_metric(answers, wrongs) (or a prompt-pairs file on the command line)")
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}: use loss, induction-loss, kl, cosine, logit-diff or a callable")
    return METRICS[metric]


def check_metric_fits(model, metric: Metric) -> None:
    """A one-line InputError when `metric` reads next-token logits and `model` (an encoder) has none."""
    if metric.needs_logits and not model.cfg.has_unembed:
        raise InputError(f"metric {metric.name!r} reads next-token logits and this model (an encoder) has none: "
                         "use the cosine metric (similarity of the mean-pooled embedding to the clean run's)")


# ----- prompt pairs and encoders ---------------------------------------------------------------------------
PAIR_METRICS = ("logit-diff", "normalized-logit-diff", "answer-prob", "loss", "kl")


def last_rows(output: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Each prompt's last real position of a (prompts, pos, ...) output: (prompts, ...)."""
    return output[torch.arange(len(output), device=output.device), _last_real(real).to(output.device)]


def _last_log_probs(model, output: torch.Tensor, real: torch.Tensor, is_hidden: bool) -> torch.Tensor:
    rows = last_rows(output, real)
    return (model.unembed_hidden(rows) if is_hidden else rows).float().log_softmax(-1)


def _last_metric(name: str, of_log_probs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Metric:
    """A metric of the last position's log-probabilities and the clean run's there (prompts, vocab) each."""

    def on_logits(logits, tokens, real, clean_logits):
        return of_log_probs(_last_log_probs(None, logits, real, False), _last_log_probs(None, clean_logits, real, False))

    def on_hidden(model, hidden, tokens, real, clean_hidden=None):
        clean = None if clean_hidden is None else _last_log_probs(model, clean_hidden, real, True)
        return of_log_probs(_last_log_probs(model, hidden, real, True), clean)

    return Metric(name, on_logits, on_hidden)


def normalized_logit_diff_metric(answers: torch.Tensor, wrongs: torch.Tensor, clean: float,
                                 corrupted: float) -> Metric:
    """(logit-diff - corrupted) / (clean - corrupted) per prompt, with the two runs' mean logit differences:
    0 is the corrupted run, 1 the clean one."""
    if clean == corrupted:
        raise InputError(f"the clean and corrupted runs have the same logit difference ({clean:.4g}): nothing to "
                         "normalise by")
    plain = logit_diff_metric(answers, wrongs)

    def scaled(fn):
        return lambda *args: (fn(*args) - corrupted) / (clean - corrupted)

    return Metric("normalized-logit-diff", scaled(plain.on_logits), scaled(plain.on_hidden))


def pair_metric(name: str, answers: torch.Tensor, wrongs: torch.Tensor, clean_ld: float | None = None,
                corrupted_ld: float | None = None) -> Metric:
    """A prompt-pair metric by name (PAIR_METRICS); normalized-logit-diff needs the two runs' mean logit
    differences."""
    if name == "logit-diff":
        return logit_diff_metric(answers, wrongs)
    if name == "normalized-logit-diff":
        return normalized_logit_diff_metric(answers, wrongs, clean_ld, corrupted_ld)
    if name == "answer-prob":
        return _last_metric("answer-prob", lambda lp, clean: lp[torch.arange(len(lp)), answers.to(lp.device)].exp())
    if name == "loss":
        return _last_metric("loss", lambda lp, clean: -lp[torch.arange(len(lp)), answers.to(lp.device)])
    if name == "kl":
        return _last_metric("kl", lambda lp, clean: (clean.exp() * (clean - lp)).sum(-1))
    raise InputError(f"unknown metric {name!r} for prompt pairs: use {', '.join(PAIR_METRICS)} or a callable")


def _mean_pooled(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    keep = real.to(hidden.dtype)[..., None]
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)


def _cosine(output, tokens, real, clean_output):
    return torch.nn.functional.cosine_similarity(_mean_pooled(output.float(), real),
                                                 _mean_pooled(clean_output.float(), real), dim=-1)


# For a sentence encoder (no logits): the similarity of the mean-pooled embedding to the clean run's.
COSINE = Metric("cosine", _cosine, lambda model, hidden, tokens, real, clean_hidden: _cosine(hidden, tokens, real,
                                                                                             clean_hidden),
                needs_logits=False)
