"""Percentile bootstrap intervals over prompts, drawn in chunks of resamples so memory stays flat.

One resample of n prompts is a vector of multinomial counts w (how often each prompt was drawn); its
estimate is the pooled mean (w @ sums) / (w @ counts), which is the plain mean of per-prompt values when
every count is 1. A chunk of resamples is a (chunk, n) count matrix, sized so that it stays within
`CHUNK_BYTES` whatever n is: memory grows with the number of resamples times the number of estimates
(1000 x layers x heads), never with resamples times prompts. The draws are the same ones a single
(n_resamples, n) `torch.randint` call of the seeded generator makes, so intervals do not depend on the chunk size.

References
----------
Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile intervals).
"""

from __future__ import annotations

import torch

from headscope.errors import InputError

CONFIDENCE = 0.95
CHUNK_BYTES = 32 << 20  # for one chunk's draws and counts; bounds the memory whatever the number of prompts


def bootstrap_interval(values: torch.Tensor, counts: torch.Tensor | None = None, n_resamples: int = 1000,
                       seed: int = 0, confidence: float = CONFIDENCE,
                       chunk_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile bootstrap interval of a pooled mean over prompts, resampling prompts with replacement.

    values: (n, ...) per-prompt sums (or values); counts: (n,) how many items each sum holds, None for 1 each.
    chunk_bytes: memory for one chunk of resamples (default `CHUNK_BYTES`).
    Returns (low, high), each float64 of shape values.shape[1:]. A resample whose counts add to zero has no
    mean (NaN) and is left out of the quantiles.
    """
    if values.dim() < 1 or values.shape[0] == 0:
        raise InputError(f"a bootstrap needs at least one prompt, got values of shape {tuple(values.shape)}")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise InputError(f"the number of bootstrap resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}")
    n = values.shape[0]
    flat = values.reshape(n, -1).double().cpu()
    weights_of = torch.ones(n, dtype=torch.float64) if counts is None else counts.double().cpu()
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    chunk = max(1, min(n_resamples, budget // (16 * n)))  # int64 draws + float64 counts per row
    generator = torch.Generator().manual_seed(seed)
    means = torch.empty(n_resamples, flat.shape[1], dtype=torch.float64)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        draws = torch.randint(0, n, (rows, n), generator=generator)
        weights = torch.zeros(rows, n, dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
        means[start:start + rows] = (weights @ flat) / (weights @ weights_of)[:, None]  # NaN where nothing counted
    alpha = (1 - confidence) / 2
    ends = torch.nanquantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64), dim=0)
    return ends[0].reshape(values.shape[1:]), ends[1].reshape(values.shape[1:])
