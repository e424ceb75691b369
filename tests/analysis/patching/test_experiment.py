"""run_patching: options choose the experiment; contradictory ones are refused with one clear message."""

import pytest

from headscope.analysis.patching.exact import patch
from headscope.analysis.patching.experiment import parse_path, run_patching
from headscope.errors import InputError
from tests.analysis.patching.conftest import make_pairs, tiny


def test_options_choose_the_experiment():
    model, pairs = tiny("gpt2"), make_pairs()
    named = run_patching(model, pairs, heads="L1H2,L0H0", site="k", control=5)
    assert named.kind == "k" and named.effects[0].heads == ((1, 2), (0, 0))
    assert named.effects[0].value == pytest.approx(patch(model, pairs, [(1, 2), (0, 0)], site="k").effects[0].value)
    assert named.meta["control"]["n_draws"] == 5
    assert run_patching(model, pairs, sweep="head", method="atp").method == "atp"
    direct = run_patching(model, pairs, path_spec="L0H1")
    assert direct.meta["via"] == "logits" and direct.meta["receivers"] == []
    swept = run_patching(model, pairs, path_spec="*:L1H0", via="k")
    assert [e.heads for e in swept.effects] == [((0, h),) for h in range(4)]
    assert parse_path("L0H1,L0H2:L1H3", 2, 4) == ([(0, 1), (0, 2)], [(1, 3)])


def test_contradictory_options_are_refused():
    model, pairs = tiny("gpt2"), make_pairs()
    cases = [(dict(), "exactly one"), (dict(heads="L0H0", sweep="head"), "exactly one"),
             (dict(heads="L0H0", method="atp"), "estimates a whole sweep"),
             (dict(sweep="head", control=3), "random-head control compares"),
             (dict(heads="L0H0", via="q"), "give a path"),
             (dict(heads="L9H0"), "head L9H0 does not exist"),
             (dict(path_spec="L1H0:L0H1", via="k"), "must come after the sender"),
             (dict(sweep="head", method="ig"), "unknown patching method")]
    for options, message in cases:
        with pytest.raises(InputError, match=message):
            run_patching(model, pairs, **options)
