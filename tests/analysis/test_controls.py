"""Held-out selection and the random-head control, for patching and ablation."""

import pytest

import headscope
from headscope.analysis.controls import held_out_ablation, held_out_patching, random_head_control, random_heads_like
from headscope.analysis.patching.exact import patch
from headscope.analysis.patching.generate import induction_records
from headscope.analysis.patching.pairs import from_records
from headscope.errors import InputError


def test_random_heads_keep_the_layers_and_differ_from_the_real_set():
    heads = [(0, 1), (1, 2), (1, 3)]
    draws = random_heads_like(heads, 4, 30, seed=1)
    assert draws == random_heads_like(heads, 4, 30, seed=1) and len(draws) == 30
    for draw in draws:
        assert sorted(l for l, _ in draw) == [0, 1, 1] and len(set(draw)) == 3 and set(draw) != set(heads)
    with pytest.raises(InputError, match="fill their layers"):
        random_heads_like([(0, h) for h in range(4)], 4, 3)
    control = random_head_control(lambda hs: float(sum(h for _, h in hs)), [(0, 3)], 4, base=0.0, n_draws=20)
    assert control.real == 3 and control.percentile == 100.0  # every other head of layer 0 is 0, 1 or 2


@pytest.fixture(scope="module")
def toy():
    return headscope.load_model("toy-induction-2l")


def test_held_out_patching_on_the_toy_model_picks_induction_heads_and_beats_random(toy):
    pairs = from_records(induction_records(toy.tokenizer, 24, seed=0), toy.tokenizer)
    result = held_out_patching(toy, pairs, k=2, denoise=True, metric="normalized-logit-diff", n_draws=10,
                               n_bootstrap=100)
    held = result.meta["held_out"]
    assert not set(held["select"]) & set(held["evaluate"]) and len(held["select"] + held["evaluate"]) == 24
    assert result.meta["n_pairs"] == 12  # measured on the evaluation half only
    assert all(name.startswith("L1") for name in held["selected_on_select"])  # induction heads live in layer 1
    assert held["control"]["n_draws"] == 10 and held["control"]["percentile"] >= 50
    again = patch(toy, pairs.subset(held["evaluate"]), [(int(n[1]), int(n[3])) for n in held["selected_on_select"]],
                  metric="normalized-logit-diff", denoise=True, n_bootstrap=100)
    assert again.effects[0].value == pytest.approx(result.effects[0].value, abs=1e-6)


def test_held_out_ablation_records_the_split(toy):
    data = headscope.repeated_random_tokens(8, 10, vocab_size=64, seed=0, bos_token_id=64)
    result = held_out_ablation(toy, data, k=1, metric="induction-loss", n_draws=5)
    held = result.meta["held_out"]
    assert sorted(held["select"] + held["evaluate"]) == list(range(8)) and result.meta["n_prompts"] == 4
    assert list(held["selected_on_select"])[0].startswith("L") and held["control"]["n_draws"] == 5
