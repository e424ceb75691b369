"""Many edited forward passes in one: variants stacked along the batch, each starting at a given layer.

What the ablation sweep and the patching sweeps share. A sweep keeps the residual stream entering each
layer from one unedited pass; every edited variant of a layer starts there (`run_from_layer`) instead of
re-running the layers before, and `k` variants run together as one (k * prompts) batch, variant-major:
rows `i * n : (i + 1) * n` are variant i. `variants_per_pass` sizes k to a memory budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Edit = Callable[[torch.Tensor], None]  # changes one variant's rows of an activation in place


def bytes_per_variant(cfg, n_prompts: int, n_pos: int, reads: str) -> int:
    """Rough float32 memory one stacked variant holds at once: its logits when the metric reads them, else
    the largest activations of a block (residual copies, MLP hidden, one layer's attention scores)."""
    if reads == "logits":
        return 3 * n_prompts * n_pos * cfg.d_vocab * 4
    return n_prompts * n_pos * (4 * cfg.d_model + 2 * cfg.d_mlp + cfg.n_heads * n_pos) * 4


def variants_per_pass(cfg, n_prompts: int, n_pos: int, reads: str, max_memory: int) -> int:
    """How many variants fit in one pass under `max_memory` bytes (at least one)."""
    return max(1, int(max_memory // bytes_per_variant(cfg, n_prompts, n_pos, reads)))


def edit_hook(n: int, edits: Sequence[Edit]):
    """A hook applying `edits[i]` to rows `i * n : (i + 1) * n` of a stacked activation (a clone of it)."""

    def hook(activation: torch.Tensor, hook) -> torch.Tensor:
        activation = activation.clone()
        for index, edit in enumerate(edits):
            edit(activation[index * n : (index + 1) * n])  # a view: the edit writes into the clone
        return activation

    return hook


def run_stacked(model, layer: int, stacked_resid: torch.Tensor, n_variants: int, hooks: Sequence,
                mask: torch.Tensor | None, reads: str) -> torch.Tensor:
    """The forward pass from `layer` of `n_variants` stacked variants under `hooks` [(name, fn)].

    stacked_resid: the residual stream entering `layer`, (variants * prompts, pos, d_model), variant-major
    (`resid.repeat(n_variants, 1, 1)` when every variant starts alike). mask: the prompts' (prompts, pos)
    mask or None. Returns the stacked `reads` output.
    """
    stacked_mask = None if mask is None else mask.repeat(n_variants, 1)
    with model.hooks(list(hooks)):
        return model.run_from_layer(stacked_resid, layer, attention_mask=stacked_mask, return_type=reads)


def split_metric(metric, model, output: torch.Tensor, n_variants: int, tokens, real, clean_output) -> list[torch.Tensor]:
    """Per-prompt metric values of each stacked variant of `output`."""
    n = len(tokens)
    return [metric.of(model, output[i * n : (i + 1) * n], tokens, real, clean_output) for i in range(n_variants)]
