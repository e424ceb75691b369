"""Attention that also returns each row's log-sum-exp and averages of extra per-key columns.

For a row i with scores s_ij = scale * q_i . k_j and lse_i = logsumexp_j s_ij:
- any single entry of the pattern is exp(s_ij - lse_i), so a few entries per row need no pattern;
- any average sum_j A_ij f(j) of a per-key column f is what attention does to values, so appending f to
  the values of the one fused call gives it for free (positions -> mean distance, K -> entropy).
One call per layer thus yields the layer's output z and every statistic, and no n x n pattern is formed.
Three implementations: PyTorch's CPU flash kernel, the CUDA memory-efficient kernel, and an explicit
reference that materialises the pattern in query chunks (used for tests and any other device). Where the
fused kernel cannot run (bfloat16 below compute capability 8.0, float64 on CUDA) or refuses the inputs,
the reference takes over, with one warning per reason.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from headscope.capture.budget import is_out_of_memory

_warned: set[str] = set()  # fallback reasons already reported in this process


def fused_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and log-sum-exp, heads first.

    q, k: (batch, head, pos, d); v: (batch, head, pos, e) with any width e; bias: additive
    (batch or 1, 1, pos, pos) or None. Returns out (batch, head, pos, e) and lse (batch, head, pos), float32.
    """
    kernel = FUSED_KERNELS.get(q.device.type)
    if kernel is None:
        return reference_attention_with_lse(q, k, v, bias, causal, scale)
    reason = cuda_refusal(q.dtype, torch.cuda.get_device_capability(q.device)) if q.device.type == "cuda" else None
    if reason is None:
        try:
            return kernel(q, k, v, bias, causal, scale)
        except RuntimeError as err:  # the kernel's own refusal (a shape or layout it has no variant for)
            if is_out_of_memory(err):
                raise  # the engine halves the batch instead
            reason = f"the fused {q.device.type} kernel refused {q.dtype} inputs ({err})"
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"{reason}; using the explicit reference attention instead (slower, same results)",
                      RuntimeWarning, stacklevel=2)
    return reference_attention_with_lse(q, k, v, bias, causal, scale)


def cuda_refusal(dtype: torch.dtype, capability: tuple[int, int]) -> str | None:
    """Why the CUDA memory-efficient kernel has no variant for `dtype` on a GPU of compute `capability`
    (major, minor), or None when it has one: its bfloat16 kernels need 8.0 (Ampere), it has no float64."""
    if dtype == torch.float64:
        return "the fused CUDA kernel has no float64 variant"
    if dtype == torch.bfloat16 and capability < (8, 0):
        return (f"the fused CUDA kernel needs compute capability 8.0 for bfloat16, this GPU has "
                f"{capability[0]}.{capability[1]}")
    return None


def _pad_last(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x


def _cpu_flash(q, k, v, bias, causal, scale):
    # The CPU flash kernel wants one head size for q, k and v: zero columns on q and k leave the scores as
    # they are (scale is passed explicitly), so widen q and k to the values' width.
    width = max(q.shape[-1], v.shape[-1])
    mask = None if bias is None else bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _pad_last(q, width), _pad_last(k, width), _pad_last(v, width), 0.0, bias is None and causal,
        attn_mask=mask, scale=scale,
    )
    return out[..., : v.shape[-1]], lse.float()


def _cuda_efficient(q, k, v, bias, causal, scale):
    # The memory-efficient kernel takes a value width different from q/k and returns the log-sum-exp
    # (padded to a multiple of 32 positions); widths are padded to multiples of 8 for its alignment.
    qk_width = -(-q.shape[-1] // 8) * 8
    v_width = -(-v.shape[-1] // 8) * 8
    attn_bias = None if bias is None else _aligned_bias(bias.to(q.dtype)).expand(q.shape[0], q.shape[1], -1, -1)
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        _pad_last(q, qk_width), _pad_last(k, qk_width), _pad_last(v, v_width), attn_bias,
        True, 0.0, bias is None and causal, scale=scale,
    )
    return out[..., : v.shape[-1]], lse[..., : q.shape[2]].float()


def _aligned_bias(bias: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """The kernel wants the bias' row stride a multiple of 16 elements, as `sdpa` arranges internally:
    pad the key axis, then slice back, keeping the padded stride."""
    n_key = bias.shape[-1]
    padded = -(-n_key // multiple) * multiple
    return F.pad(bias, (0, padded - n_key))[..., :n_key] if padded != n_key else bias


# The fused kernel per device type; any other device uses the reference. A test replaces an entry with a
# function raising the kernel's RuntimeError to exercise the fallback on a CPU.
FUSED_KERNELS = {"cpu": _cpu_flash, "cuda": _cuda_efficient}


def reference_attention_with_lse(q, k, v, bias, causal, scale, query_chunk: int = 256):
    """The explicit computation, a chunk of query rows at a time (memory: chunk x pos per head)."""
    outs, lses = [], []
    n_q, n_k = q.shape[2], k.shape[2]
    for start in range(0, n_q, query_chunk):
        stop = min(start + query_chunk, n_q)
        scores = torch.einsum("bhqd,bhkd->bhqk", q[:, :, start:stop].float(), k.float()) * scale
        if bias is not None:
            scores = scores + bias[:, :, start:stop].float()
        elif causal:
            allowed = torch.ones(stop - start, n_k, dtype=torch.bool, device=q.device).tril(start + n_k - n_q)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        lse = scores.logsumexp(-1)
        pattern = (scores - lse[..., None]).exp()
        outs.append(torch.einsum("bhqk,bhke->bhqe", pattern, v.float()).to(v.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)
