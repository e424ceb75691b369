"""The attention-with-log-sum-exp kernels: the fused kernels equal the explicit reference, a kernel's
refusal falls back to the reference with one warning, and masks stay finite in half precision."""

import warnings

import pytest
import torch

from headscope.capture import kernels
from headscope.capture.datasets import from_tensor
from headscope.capture.engine import capture
from headscope.capture.kernels import cuda_refusal, fused_attention_with_lse, reference_attention_with_lse
from headscope.model.attention import attention_bias
from headscope.model.transformer import HookedTransformer
from tests.capture.test_engine import assert_same_result, natural_like_tokens
from tests.conftest import TINY_CONFIGS


def heads_first(dtype=torch.float32, batch=2, n_pos=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, 4, n_pos, 8, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(batch, 4, n_pos, 19, generator=g).to(dtype)  # a value width that is no multiple of 8
    return q, k, v


def refuse_like_the_cuda_kernel(message):
    """What PyTorch's memory-efficient kernel raises when it has no variant (attention.cu, cutlassF)."""
    def kernel(*args):
        raise RuntimeError(message)
    return kernel


def test_the_cuda_kernel_is_refused_where_it_has_no_variant():
    assert "compute capability 8.0 for bfloat16, this GPU has 7.5" in cuda_refusal(torch.bfloat16, (7, 5))
    assert "no float64" in cuda_refusal(torch.float64, (9, 0))
    assert cuda_refusal(torch.bfloat16, (8, 0)) is None
    assert cuda_refusal(torch.float16, (7, 0)) is None and cuda_refusal(torch.float32, (6, 0)) is None


@torch.no_grad()
def test_a_refused_kernel_falls_back_to_the_reference_with_one_warning(monkeypatch):
    q, k, v = heads_first()
    bias = attention_bias(9, 9, True, torch.ones(2, 9), torch.float32, q.device)
    monkeypatch.setitem(kernels.FUSED_KERNELS, "cpu", refuse_like_the_cuda_kernel("cutlassF: no kernel found to launch!"))
    with pytest.warns(RuntimeWarning, match=r"refused torch.float32 inputs \(cutlassF: no kernel found to launch!\)"):
        out, lse = fused_attention_with_lse(q, k, v, bias, True, 0.3)
    expected_out, expected_lse = reference_attention_with_lse(q, k, v, bias, True, 0.3)
    torch.testing.assert_close(out, expected_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, expected_lse, atol=0, rtol=0)


@torch.no_grad()
def test_a_capture_whose_kernel_refuses_equals_the_fused_capture_and_warns_once(monkeypatch):
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["bert"]).eval()  # bidirectional: two kernel calls per layer
    dataset = from_tensor(natural_like_tokens(n_prompts=4, seed=3))
    fused = capture(model, dataset, batch_size=2, progress=False)
    monkeypatch.setitem(kernels.FUSED_KERNELS, "cpu", refuse_like_the_cuda_kernel("no variant for this test"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallen_back = capture(model, dataset, batch_size=2, progress=False)
    assert_same_result(fused, fallen_back, atol=1e-5)
    messages = [str(w.message) for w in caught if "no variant for this test" in str(w.message)]
    assert len(messages) == 1 and "using the explicit reference attention" in messages[0]  # 8 calls, 1 warning


def test_out_of_memory_in_the_kernel_is_not_a_refusal(monkeypatch):
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(kernels.FUSED_KERNELS, "cpu", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        fused_attention_with_lse(*heads_first(), None, True, 0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.no_grad()
def test_a_row_with_every_key_masked_stays_finite_in_half_precision(dtype):
    """The mask carries the minimum of the dtype it joins; cast from float32's it would be -inf, and a
    row of -inf NaN."""
    q, k, v = heads_first(dtype)
    key_mask = torch.ones(2, 9)
    key_mask[0] = 0  # prompt 0: no key may be attended to
    bias = attention_bias(9, 9, False, key_mask, dtype, q.device)
    for out, lse in (fused_attention_with_lse(q, k, v, bias, False, 0.3),
                     reference_attention_with_lse(q, k, v, bias, False, 0.3)):
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        reference = reference_attention_with_lse(q[1:].float(), k[1:].float(), v[1:].float(), None, False, 0.3)
        torch.testing.assert_close(out[1].float(), reference[0][0], atol=3e-2, rtol=0)
