"""Prompt pairs on tiny random models: token ids, a corrupted copy, padding on one pair."""

import dataclasses

import pytest
import torch

from headscope.analysis.patching.pairs import PromptPairs
from headscope.capture.datasets import from_tensor
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS


def make_pairs(n: int = 4, n_pos: int = 7, seed: int = 0, padded: bool = True) -> PromptPairs:
    """Random clean prompts, corrupted at three positions, the last pair two tokens shorter (padded)."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 99, (n, n_pos), generator=generator)
    corrupted = clean.clone()
    corrupted[:, [1, 2, 4]] = torch.randint(0, 99, (n, 3), generator=generator)
    mask = torch.ones(n, n_pos, dtype=torch.long)
    if padded:
        mask[-1, -2:] = 0
    answers = torch.randint(0, 99, (n,), generator=generator)
    wrongs = (answers + 1 + torch.randint(0, 97, (n,), generator=generator)) % 99
    clean_data = dataclasses.replace(from_tensor(clean), attention_mask=mask if padded else None)
    corrupted_data = dataclasses.replace(from_tensor(corrupted), attention_mask=mask if padded else None)
    return PromptPairs(clean_data, corrupted_data, answers, wrongs, "random")


@pytest.fixture
def pairs() -> PromptPairs:
    return make_pairs()


def tiny(arch: str, seed: int = 0) -> HookedTransformer:
    torch.manual_seed(seed)
    model = HookedTransformer(TINY_CONFIGS[arch]).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                param.add_(0.1 * torch.randn_like(param))
            else:
                param.mul_(5)  # larger weights than the 0.02 init, so patches change the logits visibly
    return model


def logit_diff(logits: torch.Tensor, pairs: PromptPairs) -> torch.Tensor:
    """By hand: logit(answer) - logit(wrong) at each pair's last real position."""
    mask = pairs.clean.attention_mask
    last = (torch.full((len(pairs),), logits.shape[1]) if mask is None else mask.sum(1)) - 1
    rows = torch.arange(len(pairs))
    return logits[rows, last, pairs.answers] - logits[rows, last, pairs.wrongs]
