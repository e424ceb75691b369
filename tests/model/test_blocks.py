"""Norms in half precision: computed in float32 and cast back, so large activations do not overflow."""

import pytest
import torch
import torch.nn.functional as F

from headscope.model.blocks import LayerNorm, RMSNorm


def gpt2_like_activations(dtype: torch.dtype) -> torch.Tensor:
    """A residual stream of (2, 16, 64) with GPT-2-style outliers: a few dimensions of several hundred."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 64, generator=g) * 2
    x[..., 7] = 300 + 200 * torch.rand(2, 16, generator=g)  # |x| >= 256: x.pow(2) overflows float16
    x[..., 40] = -450
    return x.to(dtype)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@torch.no_grad()
def test_layernorm_of_large_activations_matches_float32_in_half_precision(dtype, tolerance):
    """Tolerance: a few units in the last place of outputs of size up to ~8 (float16 2^-11, bfloat16 2^-8)."""
    x = gpt2_like_activations(dtype)
    norm = LayerNorm(64, eps=1e-5)
    norm.w.normal_(1.0, 0.2, generator=torch.Generator().manual_seed(1))
    norm.b.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(2))
    expected = F.layer_norm(x.float(), (64,), norm.w, norm.b, eps=1e-5)
    got = norm.to(dtype)(x)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert (got.float() - expected).abs().max() < tolerance


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@torch.no_grad()
def test_rmsnorm_of_large_activations_matches_float32_in_half_precision(dtype, tolerance):
    x = gpt2_like_activations(dtype)
    norm = RMSNorm(64, eps=1e-5)
    norm.w.normal_(1.0, 0.2, generator=torch.Generator().manual_seed(1))
    expected = F.rms_norm(x.float(), (64,), norm.w, eps=1e-5)
    got = norm.to(dtype)(x)
    assert got.dtype == dtype and (got.float() - expected).abs().max() < tolerance
