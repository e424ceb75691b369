"""Each ablation and patching metric on hand-made logits (and hidden states) whose answer is written in the
test: which positions count, and what is averaged."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from headscope.analysis.metrics import (COSINE, METRICS, PAIR_METRICS, induction_loss_metric, last_rows,
                                        logit_diff_metric, mean_token_loss, normalized_logit_diff_metric,
                                        pair_metric, resolve_metric)
from headscope.capture.datasets import TokenDataset, from_tensor
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS


def _logits_of(probabilities: list[list[list[float]]]) -> torch.Tensor:
    """(prompts, pos, vocab) logits whose softmax is the given rows."""
    return torch.tensor(probabilities, dtype=torch.float64).log().float()


# Prompt 0 is 0 1 2, prompt 1 is 2 2 and one padding position.
TOKENS = torch.tensor([[0, 1, 2], [2, 2, 0]])
REAL = torch.tensor([[True, True, True], [True, True, False]])
PROBS = [[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5]],
         [[0.25, 0.25, 0.5], [0.6, 0.2, 0.2], [0.9, 0.05, 0.05]]]


def test_loss_is_the_mean_next_token_loss_over_real_predictions():
    loss = METRICS["loss"](_logits_of(PROBS), TOKENS, REAL, None)
    # prompt 0 predicts 1 from position 0 (p 0.25) and 2 from position 1 (p 0.8); prompt 1 only 2 from 0 (p 0.5)
    assert loss.tolist() == pytest.approx([-(math.log(0.25) + math.log(0.8)) / 2, -math.log(0.5)], abs=1e-6)


def test_a_loss_over_chosen_positions_averages_only_those():
    second = mean_token_loss("second", lambda tokens, real: torch.tensor([[False, True], [False, True]]) & real[:, 1:])
    assert second.name == "second" and second.reads == "hidden"
    values = second(_logits_of(PROBS), TOKENS, REAL, None)
    assert values.tolist() == pytest.approx([-math.log(0.8), 0.0], abs=1e-6)  # nothing counted: 0, not NaN


def test_kl_is_from_the_clean_distribution_averaged_over_real_positions():
    clean = _logits_of(PROBS)
    other = [[[1 / 3] * 3] * 3, [[1 / 3] * 3] * 3]
    kl = METRICS["kl"](_logits_of(other), TOKENS, REAL, clean)

    def kl_from_uniform(p):
        return sum(x * math.log(x * 3) for x in p)

    want = [sum(kl_from_uniform(p) for p in PROBS[0]) / 3, sum(kl_from_uniform(p) for p in PROBS[1][:2]) / 2]
    assert kl.tolist() == pytest.approx(want, abs=1e-6)
    assert METRICS["kl"](clean, TOKENS, REAL, clean).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_induction_loss_counts_only_the_predictable_repeats():
    # BOS a b c a b c: period 3; the second a (position 4) cannot be predicted, b and c (5 and 6) can.
    tokens = torch.tensor([[9, 1, 2, 3, 1, 2, 3]])
    data = TokenDataset(tokens, has_bos=True, name="repeated-random", meta={"period": 3})
    probs = [[[0.1] * 10 for _ in range(7)]]
    probs[0][4] = [0.0125] * 10
    probs[0][4][2] = 0.8875  # predicts b at 5 with p 0.8875
    probs[0][5] = [0.05] * 10
    probs[0][5][3] = 0.55  # predicts c at 6 with p 0.55
    values = induction_loss_metric(data)(_logits_of(probs), tokens, torch.ones_like(tokens, dtype=torch.bool), None)
    assert values.tolist() == pytest.approx([-(math.log(0.8875) + math.log(0.55)) / 2], abs=1e-5)
    no_bos = TokenDataset(tokens[:, 1:], name="repeated-random", meta={"period": 3})
    shifted = _logits_of([probs[0][1:]])
    assert induction_loss_metric(no_bos)(shifted, tokens[:, 1:], torch.ones(1, 6, dtype=torch.bool), None).tolist() \
        == pytest.approx(values.tolist(), abs=1e-6)
    with pytest.raises(InputError, match="^induction-loss needs the repeated-random dataset"):
        induction_loss_metric(TokenDataset(tokens, name="tensor"))


def test_logit_difference_and_pair_metrics_read_each_prompts_last_real_position():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]], [[2.0, -1.0, 0.5], [9.0, 9.0, 9.0]]])
    real = torch.tensor([[True, True], [True, False]])  # prompt 1 ends at position 0
    answers, wrongs = torch.tensor([1, 0]), torch.tensor([0, 1])
    tokens = torch.zeros(2, 2, dtype=torch.long)
    assert logit_diff_metric(answers, wrongs)(logits, tokens, real, None).tolist() == pytest.approx([2.0, 3.0])
    assert last_rows(logits, real).tolist() == [[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]]
    log_z = [math.log(math.e + math.e ** 3 + 1), math.log(math.e ** 2 + math.e ** -1 + math.e ** 0.5)]
    answer_lp = [3.0 - log_z[0], 2.0 - log_z[1]]
    prob = pair_metric("answer-prob", answers, wrongs)(logits, tokens, real, logits)
    assert prob.tolist() == pytest.approx([math.exp(v) for v in answer_lp], abs=1e-6)
    loss = pair_metric("loss", answers, wrongs)(logits, tokens, real, logits)
    assert loss.tolist() == pytest.approx([-v for v in answer_lp], abs=1e-6)
    uniform = torch.zeros_like(logits)
    kl = pair_metric("kl", answers, wrongs)(uniform, tokens, real, logits)
    clean_p = [torch.softmax(torch.tensor(row), 0).tolist() for row in ([1.0, 3.0, 0.0], [2.0, -1.0, 0.5])]
    assert kl.tolist() == pytest.approx([sum(p * math.log(3 * p) for p in row) for row in clean_p], abs=1e-6)
    normalized = pair_metric("normalized-logit-diff", answers, wrongs, clean_ld=4.0, corrupted_ld=2.0)
    assert normalized.name == "normalized-logit-diff"
    assert normalized(logits, tokens, real, None).tolist() == pytest.approx([0.0, 0.5])
    assert pair_metric("logit-diff", answers, wrongs)(logits, tokens, real, None).tolist() == pytest.approx([2.0, 3.0])
    assert PAIR_METRICS == ("logit-diff", "normalized-logit-diff", "answer-prob", "loss", "kl")
    with pytest.raises(InputError, match=r"^the clean and corrupted runs have the same logit difference \(2\): "
                                         r"nothing to normalise by$"):
        normalized_logit_diff_metric(answers, wrongs, 2.0, 2.0)
    with pytest.raises(InputError, match="^unknown metric 'accuracy' for prompt pairs: use logit-diff, "):
        pair_metric("accuracy", answers, wrongs)


@torch.no_grad()
def test_pair_metrics_from_hidden_states_equal_them_from_logits():
    torch.manual_seed(2)
    model = HookedTransformer(TINY_CONFIGS["neox"]).eval()
    tokens = torch.randint(0, 99, (3, 6))
    real = torch.ones_like(tokens, dtype=torch.bool)
    real[2, 4:] = False
    logits, hidden = model(tokens), model(tokens, return_type="hidden")
    clean_logits, clean_hidden = logits.flip(0), hidden.flip(0)  # another run to compare with
    answers, wrongs = torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8])
    for name in PAIR_METRICS:
        metric = pair_metric(name, answers, wrongs, clean_ld=1.0, corrupted_ld=-1.0)
        assert metric.reads == "hidden"
        torch.testing.assert_close(metric.of(model, hidden, tokens, real, clean_hidden),
                                   metric(logits, tokens, real, clean_logits), atol=1e-5, rtol=1e-5, msg=name)
        assert metric.name == name
        if name != "kl":  # the metrics that do not compare with the clean run need none
            torch.testing.assert_close(metric.of(model, hidden, tokens, real, None),
                                       metric(logits, tokens, real, clean_logits), atol=1e-5, rtol=1e-5, msg=name)


def test_cosine_compares_mean_pooled_real_positions():
    output = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[2.0, 0.0], [4.0, 0.0], [0.0, 0.0]]])
    clean = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [7.0, -7.0]], [[0.0, 3.0], [3.0, 3.0], [0.0, 0.0]]])
    real = torch.tensor([[True, True, False], [True, True, True]])
    # prompt 0: (0.5, 0.5) vs (1, 1): 1. prompt 1: (2, 0) vs (1, 2): 2 / (2 * sqrt 5)
    assert COSINE(output, None, real, clean).tolist() == pytest.approx([1.0, 1 / math.sqrt(5)], abs=1e-6)
    assert COSINE.on_hidden(None, output, None, real, clean).tolist() == pytest.approx([1.0, 1 / math.sqrt(5)], abs=1e-6)


def test_metrics_by_name():
    data = from_tensor(TOKENS)
    assert resolve_metric("loss", data) is METRICS["loss"] and resolve_metric("kl", data) is METRICS["kl"]
    assert resolve_metric("cosine", data) is COSINE

    def my_metric(logits, tokens, real, clean):
        return logits[:, 0, 0]

    custom = resolve_metric(my_metric, data)
    assert custom.name == "my_metric" and custom.reads == "logits"
    assert custom.of(None, torch.ones(2, 3, 4), TOKENS, REAL, None).tolist() == [1.0, 1.0]
    assert resolve_metric(METRICS["kl"], data) is METRICS["kl"]
    unnamed = resolve_metric(functools.partial(my_metric), data)  # a callable without a __name__
    assert unnamed.name == "custom" and unnamed(torch.ones(2, 3, 4), TOKENS, REAL, None).tolist() == [1.0, 1.0]
    with pytest.raises(InputError, match="^unknown metric 'acc': use loss, induction-loss, kl, cosine, logit-diff"):
        resolve_metric("acc", data)
    with pytest.raises(InputError, match=r"^logit-diff needs the answer and wrong token of every prompt: pass "
                                         r"logit_diff_metric\(answers, wrongs\) \(or a prompt-pairs file on the command "
                                         r"line\)$"):
        resolve_metric("logit-diff", data)


@torch.no_grad()
def test_losses_from_hidden_states_are_the_hand_computed_next_token_losses():
    """The loss metrics read from the final hidden states: softmax of hidden @ W_U + b_U (and Gemma's cap) at the
    counted positions, computed here one position at a time; the chunked unembedding gives the same."""
    from headscope.analysis.metrics import _token_losses_from_hidden

    for arch in ("neox", "gemma"):
        torch.manual_seed(4)
        model = HookedTransformer(TINY_CONFIGS[arch]).eval()
        tokens = torch.tensor([[7, 3, 9, 3, 9, 4], [5, 3, 9, 5, 3, 9]])
        real = torch.tensor([[True] * 6, [True] * 5 + [False]])
        hidden = model(tokens, return_type="hidden")

        def loss_at(b, i):  # -log p(token i + 1) at position i, by hand
            logits = hidden[b, i] @ model.W_U + (model.unembed.b_U if model.cfg.unembed_bias else 0)
            if model.cfg.final_softcap:
                logits = model.cfg.final_softcap * torch.tanh(logits / model.cfg.final_softcap)
            return float(torch.logsumexp(logits, 0) - logits[tokens[b, i + 1]])

        loss = METRICS["loss"].of(model, hidden, tokens, real, None)
        assert loss.tolist() == pytest.approx([sum(loss_at(0, i) for i in range(5)) / 5,
                                               sum(loss_at(1, i) for i in range(4)) / 4], rel=1e-5)
        keep = real[:, 1:].clone()
        keep[0, 0] = False
        for chunk_bytes in (1 << 26, 4 * 99 * 2, 1):  # one chunk, two rows at a time, one row at a time
            losses = _token_losses_from_hidden(model, hidden, tokens, keep, chunk_bytes)
            expected = [[loss_at(b, i) if keep[b, i] else 0.0 for i in range(5)] for b in range(2)]
            assert losses.tolist() == [pytest.approx(row, rel=1e-5, abs=1e-6) for row in expected]
        # the repeated-random loss reads the second period only: BOS, period 2 -> predictions of positions 4 and 5
        # (prompt 1: 4 only, 5 is padding)
        data = TokenDataset(tokens, has_bos=True, name="repeated-random", meta={"period": 2})
        induction = induction_loss_metric(data).of(model, hidden, tokens, real, None)
        assert induction.tolist() == pytest.approx([(loss_at(0, 3) + loss_at(0, 4)) / 2, loss_at(1, 3)], rel=1e-5)


def test_induction_loss_needs_both_the_dataset_name_and_its_period():
    tokens = torch.tensor([[9, 1, 2, 1, 2]])
    for data in (TokenDataset(tokens, name="repeated-random", meta={}),
                 TokenDataset(tokens, name="repeated-random", meta={"period": 0}),
                 TokenDataset(tokens, name="tensor", meta={"period": 2})):
        with pytest.raises(InputError, match=r"^induction-loss needs the repeated-random dataset \(its period says "
                                             r"what repeats\)$"):
            induction_loss_metric(data)
    assert induction_loss_metric(TokenDataset(tokens, name="repeated-random", meta={"period": 2})).name == \
        "induction-loss"
