"""TransformerLens' `detect_head` scores, reproduced from our own patterns for number-for-number comparison.

headscope's own statistics (`headscope.capture.statistics`) are means over the queries where a role is
possible. TransformerLens' `transformer_lens.head_detector.detect_head` scores a whole (pos, pos)
pattern P of one prompt against a 0/1 detection pattern D (lower triangular):

- previous_token_head: D[i, i-1] = 1;
- duplicate_token_head: D[i, j] = 1 for j < i with token j == token i (BOS counts like any token);
- induction_head: the duplicate pattern shifted right one column, column 0 cleared, lower triangle kept.

`error_measure="mul"`: sum(P' * D) / sum(P') where P' is P with column 0 zeroed (`exclude_bos`) and the
diagonal zeroed (`exclude_current_token`): the share of the (remaining) attention on the detection
pattern. `"abs"`: 1 - round(sum |P - D| / pos, 3), after zeroing the same entries of |P - D| (so it is
1 minus the mean per-row L1 distance, rounded to 3 decimals as TransformerLens rounds it; it can be
negative). Over several prompts TransformerLens scores each prompt separately and averages the scores;
so does this module. Use these to compare with published TransformerLens numbers; use headscope's
statistics to classify heads (they do not dilute a role by the rows where it is impossible).

References
----------
TransformerLens, `transformer_lens/head_detector.py` (detect_head, compute_head_attention_similarity_score).
Olsson et al. (2022), "In-context Learning and Induction Heads".
"""

from __future__ import annotations

import torch

from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer


def _previous_token(tokens: torch.Tensor) -> torch.Tensor:
    n = tokens.shape[-1]
    return torch.ones(n - 1).diag(-1)


def _duplicate_token(tokens: torch.Tensor) -> torch.Tensor:
    equal = (tokens[:, None] == tokens[None, :]).float()
    equal.fill_diagonal_(0)
    return equal.tril()


def _induction(tokens: torch.Tensor) -> torch.Tensor:
    shifted = torch.roll(_duplicate_token(tokens), shifts=1, dims=1)
    shifted[:, 0] = 0
    return shifted.tril()


DETECTION_PATTERNS = {
    "previous_token_head": _previous_token,
    "duplicate_token_head": _duplicate_token,
    "induction_head": _induction,
}


def _mul(pattern: torch.Tensor, detection: torch.Tensor, exclude_bos: bool, exclude_current: bool) -> float:
    pattern = pattern.clone()  # never change the caller's pattern
    if exclude_bos:
        pattern[:, 0] = 0
    if exclude_current:
        pattern.fill_diagonal_(0)
    return ((pattern * detection).sum() / pattern.sum()).item()


def _abs(pattern: torch.Tensor, detection: torch.Tensor, exclude_bos: bool, exclude_current: bool) -> float:
    diff = (pattern - detection).abs()
    if exclude_bos:
        diff[:, 0] = 0
    if exclude_current:
        diff.fill_diagonal_(0)
    return 1 - round((diff.mean() * len(diff)).item(), 3)


ERROR_MEASURES = {"mul": _mul, "abs": _abs}


@torch.no_grad()
def tl_detect_scores(
    model: HookedTransformer,
    tokens: torch.Tensor,
    detection: str,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: str = "mul",
) -> torch.Tensor:
    """(n_layers, n_heads) float32: TransformerLens' `detect_head(model, seq, detection, ...)` for the
    prompts `tokens` (batch, pos) (each prompt scored alone, then averaged), from our `hook_pattern`.

    Give the same tokens TransformerLens would make (`bridge.to_tokens(texts)`, BOS included) and the
    numbers agree to float rounding. Prompts must be unpadded and 2 <= pos < n_ctx, as detect_head asks.
    """
    if detection not in DETECTION_PATTERNS:
        raise InputError(f"unknown detection {detection!r}; choose from {', '.join(DETECTION_PATTERNS)}")
    if error_measure not in ERROR_MEASURES:
        raise InputError(f"unknown error_measure {error_measure!r}; choose from {', '.join(ERROR_MEASURES)}")
    tokens = _check_tokens(model, tokens)
    if not model.cfg.causal:
        raise InputError("TransformerLens' head detector assumes causal (lower-triangular) patterns; "
                         "this model is an encoder")
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names, return_type=None)
    patterns = torch.stack([cache[name].float().cpu() for name in names], 1)  # (batch, layer, head, q, k)
    score = ERROR_MEASURES[error_measure]
    per_prompt = []
    for row, prompt_tokens in enumerate(tokens.cpu()):
        target = DETECTION_PATTERNS[detection](prompt_tokens)
        per_prompt.append(torch.tensor([[score(patterns[row, layer, head], target, exclude_bos, exclude_current_token)
                                         for head in range(model.cfg.n_heads)]
                                        for layer in range(model.cfg.n_layers)], dtype=torch.float32))
    return torch.stack(per_prompt).mean(0)


def _check_tokens(model: HookedTransformer, tokens) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise InputError("tokens must be an integer tensor (batch, pos); tokenize text with model.to_tokens")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or not 1 < tokens.shape[1] < model.cfg.n_ctx:
        raise InputError(f"tokens must be (batch, pos) with 2 <= pos < n_ctx={model.cfg.n_ctx}, "
                         f"got shape {tuple(tokens.shape)}")
    return tokens.to(model.device)
