"""Where each token occurred before: the (prompt, query, key) pairs of the duplicate-token and induction
statistics, listed without building a pos x pos matrix."""

from __future__ import annotations

import torch

from headscope.capture.datasets import real_mask
from headscope.errors import InputError


def earlier_occurrence_pairs(
    tokens: torch.Tensor, mask: torch.Tensor | None = None, has_bos: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch, query i, key j) for every j < i with tokens[j] == tokens[i], both real tokens, and j > 0
    when position 0 is BOS (it is the attention sink, not an occurrence of anything).

    These are the 1s of TransformerLens' `get_duplicate_token_head_detection_pattern` (strictly lower
    triangle, equal tokens; with `detect_head(exclude_bos=True)` dropping column 0), for a whole padded
    batch. No pos x pos matrix is built: each prompt's real tokens are stably sorted by id, so equal ids
    form runs in position order, and each element pairs with the elements before it in its run. Memory
    grows with the number of pairs, which for natural text is a small multiple of the tokens (a prompt of
    one token repeated n times still has n(n-1)/2). Pairs come grouped by prompt and token id.
    """
    real = _real(tokens, mask, has_bos)
    batch, pos = real.nonzero(as_tuple=True)  # row-major, so positions ascend within each prompt
    ids = tokens[batch, pos].long()
    n_ids = int(ids.max()) + 1 if len(ids) else 1
    run_key, order = torch.sort(batch * n_ids + ids, stable=True)  # runs of (prompt, id), positions ascending
    index = torch.arange(len(order), device=tokens.device)
    starts = torch.ones_like(run_key, dtype=torch.bool)
    starts[1:] = run_key[1:] != run_key[:-1]
    run_start = torch.cummax(torch.where(starts, index, 0), dim=0).values
    earlier = index - run_start  # how many occurrences came before each element
    query = torch.repeat_interleave(index, earlier)  # each element once per earlier occurrence...
    first_pair = torch.cumsum(earlier, 0) - earlier
    key = run_start[query] + torch.arange(len(query), device=tokens.device) - first_pair[query]  # ...paired with each
    query, key = order[query], order[key]
    return batch[query], pos[query], pos[key]


def induction_target_pairs(
    tokens: torch.Tensor, mask: torch.Tensor | None = None, has_bos: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch, query i, key j + 1) for every earlier occurrence j of token i: the token that followed it,
    which an induction head attends to in order to predict it again.

    TransformerLens' `get_induction_head_detection_pattern` is its duplicate pattern shifted right by one
    column (keeping the diagonal); this is that shift applied to `earlier_occurrence_pairs`. Since j < i,
    j + 1 <= i: the target is always visible to a causal head, and is i itself when the earlier occurrence
    is the previous token. A target on padding (possible only with a mask that is not right-padded) is left out.
    """
    batch, query, key = earlier_occurrence_pairs(tokens, mask, has_bos)
    target = key + 1
    keep = _real(tokens, mask, False)[batch, target]
    return batch[keep], query[keep], target[keep]


def _real(tokens: torch.Tensor, mask: torch.Tensor | None, has_bos: bool) -> torch.Tensor:
    """(batch, pos) bool: real tokens, less position 0 when it is BOS. Never changes the mask given."""
    if tokens.dim() != 2:
        raise InputError(f"tokens must be (batch, pos), got shape {tuple(tokens.shape)}")
    if mask is not None and mask.shape != tokens.shape:
        raise InputError(f"mask shape {tuple(mask.shape)} != tokens shape {tuple(tokens.shape)}")
    real = real_mask(tokens, mask).clone()
    if has_bos:
        real[:, 0] = False
    return real
