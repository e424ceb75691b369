"""Duplicate-token and induction pairs equal a brute-force listing and TransformerLens' detection patterns."""

import pytest
import torch

from headscope.capture.datasets import repeated_random_tokens
from headscope.capture.occurrences import earlier_occurrence_pairs, induction_target_pairs


def pairs_set(pairs) -> set[tuple[int, int, int]]:
    return set(zip(*(t.tolist() for t in pairs)))


def brute_force_pairs(tokens, real):
    batch, n_pos = tokens.shape
    return {(b, i, j) for b in range(batch) for i in range(n_pos) for j in range(i)
            if real[b, i] and real[b, j] and tokens[b, i] == tokens[b, j]}


@pytest.mark.parametrize("has_bos", [False, True])
def test_pairs_equal_brute_force(has_bos):
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        n_pos = int(torch.randint(1, 30, (1,), generator=generator))
        n_ids = int(torch.randint(1, 8, (1,), generator=generator))
        tokens = torch.randint(0, n_ids, (4, n_pos), generator=generator)
        lengths = torch.randint(1, n_pos + 1, (4,), generator=generator)
        mask = (torch.arange(n_pos) < lengths[:, None]).long()  # right padding
        if has_bos:
            tokens[:, 0] = 0  # the BOS id also occurs later: it must still never be a key
        real = mask.bool().clone()
        real[:, 0] &= not has_bos
        expected = brute_force_pairs(tokens, real)
        assert pairs_set(earlier_occurrence_pairs(tokens, mask, has_bos)) == expected, trial
        expected_targets = {(b, i, j + 1) for b, i, j in expected}
        assert pairs_set(induction_target_pairs(tokens, mask, has_bos)) == expected_targets, trial
        assert len(earlier_occurrence_pairs(tokens, mask, has_bos)[0]) == len(expected)  # no pair twice


def test_pairs_accept_no_mask_or_a_bool_mask_and_leave_it_alone():
    tokens = torch.tensor([[3, 4, 3, 4, 3]])
    everything = pairs_set(earlier_occurrence_pairs(tokens))
    assert everything == {(0, 2, 0), (0, 4, 0), (0, 4, 2), (0, 3, 1)}
    mask = torch.tensor([[True, True, True, True, False]])
    assert pairs_set(earlier_occurrence_pairs(tokens, mask, has_bos=True)) == {(0, 3, 1)}
    assert mask.tolist() == [[True, True, True, True, False]]
    assert pairs_set(induction_target_pairs(tokens)) == {(0, 2, 1), (0, 4, 1), (0, 4, 3), (0, 3, 2)}
    # A target on padding (only with a mask that is not right-padded) is no target.
    holed = torch.tensor([[1, 0, 1, 1, 1]])
    assert pairs_set(earlier_occurrence_pairs(tokens, holed)) == {(0, 2, 0), (0, 4, 0), (0, 4, 2)}
    assert pairs_set(induction_target_pairs(tokens, holed)) == {(0, 4, 3)}


def test_pairs_equal_transformer_lens_detection_patterns():
    head_detector = pytest.importorskip("transformer_lens.head_detector")
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        tokens = torch.randint(0, 5, (1, 20), generator=generator)
        for ours, theirs in ((earlier_occurrence_pairs, head_detector.get_duplicate_token_head_detection_pattern),
                             (induction_target_pairs, head_detector.get_induction_head_detection_pattern)):
            dense = torch.zeros(20, 20)
            _, i, j = ours(tokens)
            dense[i, j] = 1
            assert torch.equal(dense, theirs(tokens[0])), ours.__name__


def test_repeated_random_induction_targets_are_one_period_back():
    dataset = repeated_random_tokens(2, period=8, repeats=3, vocab_size=100, bos_token_id=0, exclude_ids=[0])
    batch, query, target = induction_target_pairs(dataset.tokens, None, dataset.has_bos)
    # Each token of period 2 has one earlier occurrence, each of period 3 two: (8 + 16) per prompt.
    assert len(query) == 2 * (8 + 16) and set(((query - target) % 8).tolist()) == {7}


def test_pairs_scale_without_a_pos_by_pos_matrix():
    # 8 prompts x 8192 tokens: a dense bool matrix per prompt would be 512 MB; the pairs are a few MB.
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 2000, (8, 8192), generator=generator)
    batch, query, key = earlier_occurrence_pairs(tokens)
    counts = torch.stack([torch.bincount(row, minlength=2000) for row in tokens])
    assert len(query) == int((counts * (counts - 1) // 2).sum())
    assert bool((tokens[batch, query] == tokens[batch, key]).all()) and bool((key < query).all())
