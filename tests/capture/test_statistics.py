"""Statistics are definitions both capture paths read: a new row statistic is computed as it says on the
fused path too, never as another one; user statistics pass through `capture` like the built-in ones."""

import pytest
import torch

from headscope.capture import capture
from headscope.capture.datasets import from_tensor
from headscope.capture.rows import RowStatistic
from headscope.capture.statistics import BUILT_IN, Statistic, resolve_statistics
from headscope.errors import InputError
from tests.capture.test_engine import assert_same_result, natural_like_tokens

# The largest entry of each row: a whole-row quantity with no fused form.
PEAK = Statistic("peak", row=RowStatistic(lambda rows, query_pos: rows.max(-1).values))
# Attention on the key two back: an entry statistic given as a detection pattern (query, key).
TWO_BACK = Statistic("two_back", lambda batch: torch.ones(batch.tokens.shape[1], batch.tokens.shape[1],
                                                          dtype=torch.bool).tril(-2).triu(-2))


@torch.no_grad()
def test_a_row_statistic_without_a_fused_form_is_computed_by_its_own_definition(tiny_model):
    dataset = from_tensor(natural_like_tokens(n_prompts=3, n_pos=20))
    stats = [PEAK, "entropy", "mean_distance", TWO_BACK]
    fused = capture(tiny_model, dataset, stats, progress=False)
    explicit = capture(tiny_model, dataset, stats, method="explicit", progress=False)
    assert_same_result(fused, explicit)
    # The independent statement: the patterns themselves, read at hook_pattern.
    patterns = {}
    hooks = [(lambda n: n.endswith("hook_pattern"), lambda p, hook: patterns.__setitem__(hook.name, p.clone()))]
    with tiny_model.hooks(hooks):
        tiny_model(dataset.tokens, return_type=None)
    first = 1 if tiny_model.cfg.causal else 0
    for layer in range(tiny_model.cfg.n_layers):
        pattern = patterns[f"blocks.{layer}.attn.hook_pattern"]
        peak = pattern[:, :, first:].max(-1).values.mean((0, 2))  # (head,) over the counted rows
        torch.testing.assert_close(fused.mean("peak")[layer].float(), peak, atol=1e-5, rtol=0)
        two_back = torch.diagonal(pattern, offset=-2, dim1=-2, dim2=-1).mean((0, 2))
        torch.testing.assert_close(fused.mean("two_back")[layer].float(), two_back, atol=1e-5, rtol=0)


def test_statistics_are_definitions_not_names():
    assert resolve_statistics(["prev", "induction"]) == (BUILT_IN["previous_token"], BUILT_IN["induction"])
    assert resolve_statistics(None, causal=True) == tuple(s for s in BUILT_IN.values() if s.causal)
    with pytest.raises(InputError, match="row must be a RowStatistic"):
        Statistic("spread", row="mean_distance")
    with pytest.raises(InputError, match="exactly one of entries"):
        Statistic("nothing")
    with pytest.raises(InputError, match="two different statistics are named 'induction'"):
        resolve_statistics(["induction", Statistic("induction", row=PEAK.row)])
    with pytest.raises(InputError, match="unknown statistic 'peek'"):
        resolve_statistics(["peek"])


def test_an_encoder_only_statistic_is_refused_on_a_causal_model(tiny_model):
    if not tiny_model.cfg.causal:
        pytest.skip("the model is an encoder")
    dataset = from_tensor(natural_like_tokens(n_prompts=1, n_pos=8))
    with pytest.raises(InputError, match="sep needs a bidirectional"):
        capture(tiny_model, dataset, ["sep"], progress=False)
