"""The one percentile-bootstrap helper: chunked draws equal one big draw, and the intervals equal a slow
explicit bootstrap (resample prompts, pool, take the percentiles)."""

from __future__ import annotations

import pytest
import torch

from headscope.analysis.intervals import bootstrap_interval
from headscope.errors import InputError


def _explicit(values, counts, n_resamples, seed, confidence=0.95):
    """One resample at a time, from the same (n_resamples, n) draw of the seeded generator."""
    n = values.shape[0]
    draws = torch.randint(0, n, (n_resamples, n), generator=torch.Generator().manual_seed(seed))
    means = torch.stack([values[d].double().sum(0) / counts[d].double().sum() for d in draws])
    alpha = (1 - confidence) / 2
    return torch.quantile(means, alpha, dim=0), torch.quantile(means, 1 - alpha, dim=0)


def test_pooled_interval_equals_explicit_bootstrap_for_any_chunk_size():
    torch.manual_seed(0)
    values = torch.rand(37, 2, 3, dtype=torch.float64) * 5
    counts = torch.randint(1, 6, (37,))
    want = _explicit(values, counts, 200, seed=4)
    for chunk_bytes in (1, 16 * 37 * 7, 1 << 30):  # one resample per chunk, 7 per chunk, all at once
        low, high = bootstrap_interval(values, counts, 200, seed=4, chunk_bytes=chunk_bytes)
        assert low.shape == (2, 3)
        torch.testing.assert_close(low, want[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(high, want[1], rtol=1e-12, atol=1e-12)


def test_plain_mean_interval_matches_the_former_ablation_bootstrap():
    """ablation's former `_bootstrap`: deltas[draws].mean(1), then the 2.5% and 97.5% quantiles."""
    deltas = torch.linspace(-1, 2, 25) ** 3
    draws = torch.randint(0, 25, (1000, 25), generator=torch.Generator().manual_seed(0))
    want = torch.quantile(deltas.double()[draws].mean(1), torch.tensor([0.025, 0.975], dtype=torch.float64))
    low, high = bootstrap_interval(deltas, None, 1000, seed=0)
    assert float(low) == pytest.approx(float(want[0]), abs=1e-12)
    assert float(high) == pytest.approx(float(want[1]), abs=1e-12)
    assert float(low) < float(deltas.double().mean()) < float(high)


def test_resamples_with_nothing_counted_are_left_out():
    values = torch.tensor([[0.0], [3.0]], dtype=torch.float64)
    counts = torch.tensor([0, 3])  # a resample of only the first prompt has no mean
    low, high = bootstrap_interval(values, counts, 100, seed=1)
    assert float(low) == float(high) == 1.0


@pytest.mark.parametrize("kwargs", [{"n_resamples": 0}, {"confidence": 1.0}, {"confidence": float("nan")}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(InputError):
        bootstrap_interval(torch.ones(4), **kwargs)


def test_no_prompts_is_refused():
    with pytest.raises(InputError, match="at least one prompt"):
        bootstrap_interval(torch.ones(0))
