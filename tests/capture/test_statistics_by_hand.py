"""Each statistic is what the table of `headscope.capture.statistics` says, on hand-made patterns: values
written in the test for a pattern whose answer is obvious, and a slow loop over prompts, queries and keys
that reads the table's definitions literally (with padding, BOS, causal and encoder prompts)."""

from __future__ import annotations

import math

import pytest
import torch

from headscope.capture.datasets import from_tensor
from headscope.capture.engine import statistics_from_patterns
from headscope.capture.statistics import CAUSAL_STATISTICS, STATISTICS, check_statistics
from headscope.errors import InputError


def _previous_token_pattern(n_pos: int) -> torch.Tensor:
    """(1 prompt, 1 head, pos, pos): row 0 on itself, every other row wholly on the previous position."""
    pattern = torch.zeros(1, 1, n_pos, n_pos)
    pattern[0, 0, 0, 0] = 1.0
    for i in range(1, n_pos):
        pattern[0, 0, i, i - 1] = 1.0
    return pattern


def test_a_previous_token_pattern_scores_what_the_table_says():
    # tokens 7 1 2 1 2: position 3 repeats 1 (first at 1, followed by 2 at 2), 4 repeats 2 (first at 2, then 3)
    data = from_tensor(torch.tensor([[7, 1, 2, 1, 2]]))
    result = statistics_from_patterns([_previous_token_pattern(5)], data, CAUSAL_STATISTICS)
    want = {
        "previous_token": (1.0, 4),  # rows 1..4 all on i - 1
        "current_token": (0.0, 4),
        "attention_sink": (0.25, 4),  # only row 1 looks at position 0
        "local": (1.0, 4),  # i - 1 is one of the 3 previous positions
        "duplicate_token": (0.0, 2),  # rows 3 and 4 look at 2 and 3, not at their earlier copies 1 and 2
        "induction": (1.0, 2),  # ... which are exactly the tokens that followed those copies
        "entropy": (0.0, 4),  # one-hot rows
        "mean_distance": (1.0, 4),
    }
    for name, (mean, count) in want.items():
        assert float(result.mean(name)[0, 0]) == pytest.approx(mean, abs=1e-6), name
        assert result.count(name) == count, name


def test_a_uniform_pattern_with_bos_scores_what_the_table_says():
    # BOS 5 6 5 6, each causal row uniform over the keys it sees
    data = from_tensor(torch.tensor([[9, 5, 6, 5, 6]]), has_bos=True)
    pattern = torch.tril(torch.ones(5, 5))
    pattern = (pattern / pattern.sum(-1, keepdim=True))[None, None]
    result = statistics_from_patterns([pattern], data, CAUSAL_STATISTICS)
    want = {
        "previous_token": ((1 / 3 + 1 / 4 + 1 / 5) / 3, 3),  # rows 2..4 (row 1's previous token is BOS)
        "current_token": ((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4, 4),
        "attention_sink": ((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4, 4),
        "local": ((1 / 3 + 2 / 4 + 3 / 5) / 3, 3),  # BOS is never one of the previous positions
        "duplicate_token": ((1 / 4 + 1 / 5) / 2, 2),
        "induction": ((1 / 4 + 1 / 5) / 2, 2),
        "entropy": ((math.log(2) + math.log(3) + math.log(4) + math.log(5)) / 4, 4),
        "mean_distance": ((1 / 2 + 3 / 3 + 6 / 4 + 10 / 5) / 4, 4),  # sum of distances / keys seen
    }
    for name, (mean, count) in want.items():
        assert float(result.mean(name)[0, 0]) == pytest.approx(mean, abs=1e-6), name
        assert result.count(name) == count, name


def test_an_encoder_sep_and_next_token_on_a_hand_made_pattern():
    # [CLS] 4 4 [SEP] and padding; every row wholly on the next position, the last real row on [SEP] itself
    tokens = torch.tensor([[1, 4, 4, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    pattern = torch.zeros(1, 1, 6, 6)
    for i in range(3):
        pattern[0, 0, i, i + 1] = 1.0
    pattern[0, 0, 3, 3] = 1.0
    pattern[0, 0, 4:, :] = 7.0  # padding rows: never counted, whatever they hold
    data = from_tensor(tokens, attention_mask=mask, has_bos=True)
    result = statistics_from_patterns([pattern], data, STATISTICS, causal=False)
    want = {
        "next_token": (1.0, 3),  # rows 0..2, whose next token is real
        "sep": (1 / 3, 3),  # rows 0..2 before [SEP]; only row 2 is on it
        "current_token": (0.25, 4),  # every real row, [CLS] included; only [SEP]'s row is on itself
        "attention_sink": (0.0, 3),
        "duplicate_token": (0.0, 1),  # row 2 repeats row 1's token and looks ahead instead
        "induction": (0.0, 1),  # its induction target is itself (the token after position 1)
        "mean_distance": (0.75, 4),
    }
    for name, (mean, count) in want.items():
        assert float(result.mean(name)[0, 0]) == pytest.approx(mean, abs=1e-6), name
        assert result.count(name) == count, name


def _reference(pattern, tokens, real, has_bos, causal):
    """The table, one prompt, query and key at a time: name -> (sums (prompts, heads), counts (prompts,))."""
    n_prompts, n_heads, n_pos, _ = pattern.shape
    out = {name: (torch.zeros(n_prompts, n_heads, dtype=torch.float64), torch.zeros(n_prompts, dtype=torch.long))
           for name in (STATISTICS if not causal else CAUSAL_STATISTICS)}
    first = 1 if has_bos else 0
    for b in range(n_prompts):
        length = int(real[b].sum())
        a = pattern[b].double()  # (head, pos, pos)

        def add(name, i, value):
            out[name][0][b] += value
            out[name][1][b] += 1

        for i in range(length):
            default = i >= 1 or not causal
            earlier = [j for j in range(first, i) if tokens[b, j] == tokens[b, i]] if i >= first else []
            if i >= first + 1:
                add("previous_token", i, a[:, i, i - 1])
                add("local", i, sum(a[:, i, j] for j in range(max(first, i - 3), i)))
            if default:
                add("current_token", i, a[:, i, i])
                row = a[:, i, :length]
                add("entropy", i, -torch.where(row > 0, row * row.clamp(min=1e-300).log(), 0.0).sum(-1))
                add("mean_distance", i, sum(a[:, i, j] * abs(i - j) for j in range(length)))
            if i >= 1:
                add("attention_sink", i, a[:, i, 0])
            if earlier:
                add("duplicate_token", i, sum(a[:, i, j] for j in earlier))
                add("induction", i, sum(a[:, i, j + 1] for j in earlier))
            if not causal and i + 1 < length:
                add("next_token", i, a[:, i, i + 1])
            if not causal and i < length - 1:
                add("sep", i, a[:, i, length - 1])
    return out


@pytest.mark.parametrize("causal, has_bos", [(True, False), (True, True), (False, True), (False, False)])
def test_every_statistic_equals_the_table_read_one_entry_at_a_time(causal, has_bos):
    g = torch.Generator().manual_seed(3 + 2 * causal + has_bos)
    n_prompts, n_heads, n_pos = 3, 2, 11
    tokens = torch.randint(1, 5, (n_prompts, n_pos), generator=g)  # four ids: many duplicates
    if has_bos:
        tokens[:, 0] = 0
    mask = torch.ones_like(tokens)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    real = mask.bool()
    scores = torch.rand(n_prompts, n_heads, n_pos, n_pos, generator=g) ** 3
    visible = real[:, None, None, :] & (torch.tril(torch.ones(n_pos, n_pos, dtype=torch.bool)) if causal else True)
    pattern = scores * visible
    pattern = pattern / pattern.sum(-1, keepdim=True)
    pattern[~real[:, None, :, None].expand_as(pattern)] = 3.0  # padding rows: garbage that must not count
    result = statistics_from_patterns([pattern], from_tensor(tokens, attention_mask=mask, has_bos=has_bos),
                                      CAUSAL_STATISTICS if causal else STATISTICS, causal=causal)
    for name, (sums, counts) in _reference(pattern, tokens, real, has_bos, causal).items():
        assert counts.sum() > 0, name
        assert result.counts[name].tolist() == counts.tolist(), name
        torch.testing.assert_close(result.sums[name][:, 0], sums, atol=1e-5, rtol=0, msg=name)


def test_names_and_aliases():
    assert check_statistics(["prev", "self", "sink", "dup", "previous_token"]) == \
        ("previous_token", "current_token", "attention_sink", "duplicate_token")
    assert check_statistics(["next", "bos", "current", "duplicate", "distance"]) == \
        ("next_token", "attention_sink", "current_token", "duplicate_token", "mean_distance")
    assert CAUSAL_STATISTICS == tuple(n for n in STATISTICS if n not in ("next_token", "sep"))
    with pytest.raises(InputError, match="^unknown statistic 'prevv'; choose from previous_token, current_token"):
        check_statistics(["prevv"])
    with pytest.raises(InputError, match="^no statistics asked for$"):
        check_statistics([])
    data = from_tensor(torch.tensor([[1, 2, 3]]))
    for name, what in (("next_token", "next_token needs a bidirectional"), ("sep", "sep needs a bidirectional")):
        with pytest.raises(InputError, match=f"^{what} \\(encoder\\) model"):
            statistics_from_patterns([_previous_token_pattern(3)], data, [name], causal=True)
