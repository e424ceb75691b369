"""The one percentile-bootstrap helper: chunked draws equal one big draw, the intervals equal a slow
explicit bootstrap (resample prompts, pool, take the percentiles), and a 95% interval of a normal sample's
mean covers the true mean in about 95% of seeded repetitions with the width of 2 x 1.96 standard errors."""

from __future__ import annotations

import math

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


def test_defaults_are_1000_resamples_of_seed_0_at_95_percent():
    """The interval a caller gets without options is the explicit bootstrap of 1000 draws of seed 0."""
    values = torch.linspace(-1, 2, 25, dtype=torch.float64) ** 3
    want = _explicit(values[:, None], torch.ones(25), 1000, seed=0)
    low, high = bootstrap_interval(values)
    assert float(low) == pytest.approx(float(want[0]), abs=1e-12)
    assert float(high) == pytest.approx(float(want[1]), abs=1e-12)


def test_95_percent_interval_of_a_normal_mean_covers_it_95_percent_of_the_time():
    """Seeded repetitions of n normal draws (mean 3, sd 1): the interval holds 3 in about 95% of them, and its
    width is about 2 x 1.96 standard errors (1 / sqrt(n)). The percentile bootstrap runs a little short at
    small n (its spread uses the plug-in sd, divisor n), so n = 100; the coverage tolerance is four binomial
    standard deviations of the repetitions' count, which an interval at other percentiles (e.g. 40/60:
    coverage about 25%) or a one-sided one misses by far."""
    n, repetitions, mean = 100, 400, 3.0
    generator = torch.Generator().manual_seed(1234)
    covered, widths = 0, []
    for rep in range(repetitions):
        sample = mean + torch.randn(n, dtype=torch.float64, generator=generator)
        low, high = bootstrap_interval(sample, None, 1000, seed=rep)
        covered += float(low) <= mean <= float(high)
        widths.append(float(high - low))
    spread = math.sqrt(0.95 * 0.05 / repetitions)
    assert abs(covered / repetitions - 0.95) < 4 * spread
    assert sum(widths) / repetitions == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.05)


def test_the_confidence_sets_the_percentiles():
    """A 50% interval of a large normal sample is mean +- 0.674 standard errors (the 25th and 75th percentiles)."""
    n = 400
    sample = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    low, high = bootstrap_interval(sample, None, 4000, seed=0, confidence=0.5)
    se = float(sample.std(unbiased=False)) / math.sqrt(n)
    assert float(high - low) == pytest.approx(2 * 0.6745 * se, rel=0.08)
    assert float((low + high) / 2) == pytest.approx(float(sample.mean()), abs=0.1 * se)


def test_resamples_with_nothing_counted_are_left_out():
    values = torch.tensor([[0.0], [3.0]], dtype=torch.float64)
    counts = torch.tensor([0, 3])  # a resample of only the first prompt has no mean
    low, high = bootstrap_interval(values, counts, 100, seed=1)
    assert float(low) == float(high) == 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"n_resamples": 0}, "resamples must be a positive integer, got 0"),
    ({"confidence": 1.0}, r"confidence must be in \(0, 1\), got 1.0"),
    ({"confidence": 0.0}, r"confidence must be in \(0, 1\), got 0.0"),
    ({"confidence": float("nan")}, "confidence must be in"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        bootstrap_interval(torch.ones(4), **kwargs)


def test_no_prompts_is_refused():
    with pytest.raises(InputError, match="at least one prompt"):
        bootstrap_interval(torch.ones(0))
