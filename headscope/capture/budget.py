"""How many prompts fit in one forward pass, from a memory budget and an estimate of what a pass holds.

The estimate counts the tensors alive at the widest point of a layer (residual stream and norms, the
expanded per-head q, k, v and extra value columns of the fused call, the MLP's hidden activations, the
additive padding mask) and, for the explicit path, the patterns. It errs high: the CUDA path also
halves the batch and retries on an out-of-memory error.
"""

from __future__ import annotations

import torch

from headscope.model.config import ModelConfig


def bytes_per_prompt(cfg: ModelConfig, n_pos: int, dtype_size: int, padded: bool, method: str) -> int:
    """Rough peak activation memory of one prompt of `n_pos` tokens in one forward pass, in bytes."""
    width = cfg.n_heads * cfg.d_head
    per_token = 6 * cfg.d_model + 3 * cfg.d_mlp + 10 * width
    total = dtype_size * n_pos * per_token
    if padded:
        total += 4 * n_pos * n_pos  # the additive mask (pos x pos) of one prompt
    if method == "explicit":
        total += 3 * 4 * cfg.n_heads * n_pos * n_pos  # scores, pattern, and one float32 copy
    return total


def available_memory(device: torch.device) -> int:
    """Bytes free for activations: most of the free GPU memory, half of the available RAM on a CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.7)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError):
        return 4 << 30


def choose_batch_size(
    cfg: ModelConfig, n_pos: int, n_prompts: int, max_memory: int | None, device: torch.device, method: str,
    dtype_size: int = 4, padded: bool = True,
) -> int:
    """The largest batch (at least 1, at most n_prompts) whose estimated footprint fits the budget."""
    budget = max_memory if max_memory is not None else available_memory(torch.device(device))
    per_prompt = bytes_per_prompt(cfg, n_pos, dtype_size, padded, method)
    return max(1, min(n_prompts, budget // per_prompt))


def is_out_of_memory(err: BaseException) -> bool:
    """True for PyTorch's out-of-memory errors (CUDA's, and the CPU allocator's)."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()
