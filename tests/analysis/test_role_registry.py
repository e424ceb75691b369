"""The role registry: a role defined from Python flows through classify, JSON, CSV and the heatmap; bad
definitions are refused in one line; the built-in roles are the registry's."""

import csv
import io
import json
import math

import pytest
import torch

from headscope.analysis import Role, classify_heads, get_role, register_role, registered_roles, unregister_role
from headscope.analysis.role_registry import BUILT_IN_ROLES, OPTIONAL_ROLES, role_catalogue
from headscope.errors import InputError
from tests.analysis.test_roles import EXPECTED, forced_hooks, forced_model, forced_target, probe  # noqa: F401

BOS_OR_PREVIOUS = 0.9  # a head holds it when nearly all its attention is on BOS or the previous token


def bos_or_previous(batch) -> torch.Tensor:
    """A detection pattern (query, key): key 0 and the previous key, for every query from 1 on."""
    n = batch.tokens.shape[1]
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[1:, 0] = True
    mask[torch.arange(1, n), torch.arange(0, n - 1)] = True
    return mask


@pytest.fixture
def user_roles():
    """Two user roles registered for one test and always taken away after it."""
    weights = Role("planted_score", score=lambda model, dataset: planted_scores(model), threshold=0.5,
                   evidence="a made-up weight score: 1 on L1H2 only")
    roles = [register_role(Role("bos_or_prev", entries=bos_or_previous, threshold=BOS_OR_PREVIOUS,
                                evidence="attention on BOS or the previous token")), register_role(weights)]
    try:
        yield roles
    finally:
        for role in roles:
            unregister_role(role.name)


def planted_scores(model) -> torch.Tensor:
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    scores[1, 2] = 1.0
    return scores


def expected_bos_or_previous(dataset, layer: int, head: int) -> float:
    """The score from the planted heads' definitions (forced_target), not from any capture: the share of
    queries 1..n-1 whose forced key is 0 or i - 1; a uniform head (None) spreads 2 / (i + 1) there."""
    hits = []
    for row in dataset.tokens.tolist():
        for i in range(1, len(row)):
            target = forced_target(layer, head, i, row)
            hits.append((1.0 if i == 1 else 2.0) / (i + 1) if target is None else float(target in (0, i - 1)))
    return sum(hits) / len(hits)


def test_a_user_role_is_scored_judged_and_written_like_a_built_in_one(forced_model, user_roles):
    dataset = probe()
    with forced_model.hooks(forced_hooks()):
        table = classify_heads(forced_model, dataset, n_bootstrap=200)
    assert table.roles[-2:] == ("bos_or_prev", "planted_score")
    for row in table.heads:
        expected = expected_bos_or_previous(dataset, row.layer, row.head)
        assert row.scores["bos_or_prev"] == pytest.approx(expected, abs=2e-3), row.name
        assert ("bos_or_prev" in row.roles) == (expected >= BOS_OR_PREVIOUS), row.name
        assert ("planted_score" in row.roles) == ((row.layer, row.head) == (1, 2))
        built_in = tuple(r for r in row.roles if r not in ("bos_or_prev", "planted_score"))
        assert built_in == EXPECTED.get((row.layer, row.head), ())  # the user roles change nothing else
    assert {h.name for h in table.with_role("bos_or_prev")} == {"L0H0", "L1H0"}
    assert "(uniform attention)" in table.head(0, 0).reasons["bos_or_prev"]
    assert table.head(1, 2).reasons["planted_score"] == "planted_score 1.00 >= threshold 0.50 (no null)"

    data = json.loads(table.to_json())
    row = next(r for r in data["results"] if r["heads"] == ["L1H0"])
    assert "bos_or_prev" in row["roles"] and row["scores"]["bos_or_prev"] > 0.99
    assert data["meta"]["thresholds"]["bos_or_prev"] == BOS_OR_PREVIOUS
    assert data["meta"]["role_definitions"]["bos_or_prev"]["scored_by"] == "detection pattern"
    assert data["meta"]["role_definitions"]["planted_score"]["null"] == "no null"
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(table.to_csv()))}
    assert rows["L1H0"]["roles"] == ";".join(EXPECTED[(1, 0)] + ("bos_or_prev",))
    assert float(rows["L1H0"]["bos_or_prev"]) == table.head(1, 0).scores["bos_or_prev"]
    assert rows["L1H2"]["roles"] == "planted_score" and math.isnan(float(rows["L1H2"]["planted_score_lo"]))

    from headscope.viz import role_heatmap

    figure = role_heatmap(table)
    assert [t.name for t in figure.data][-2:] == ["bos_or_prev", "planted_score"]


def test_an_unregistered_role_is_gone(forced_model, user_roles):
    unregister_role("bos_or_prev")
    user_roles.remove(next(r for r in user_roles if r.name == "bos_or_prev"))
    table = classify_heads(forced_model, probe(4), n_bootstrap=20)
    assert "bos_or_prev" not in table.roles and "planted_score" in table.roles
    with pytest.raises(InputError, match="unknown role 'bos_or_prev'"):
        get_role("bos_or_prev")


def test_a_per_prompt_score_gets_an_interval(forced_model):
    def per_prompt(model, dataset):
        return torch.linspace(0, 1, len(dataset))[:, None, None].expand(len(dataset), 2, 4)

    register_role(Role("rising", score=per_prompt, threshold=0.2, null=None))
    try:
        head = classify_heads(forced_model, probe(8), n_bootstrap=200).head(0, 0)
    finally:
        unregister_role("rising")
    lo, hi = head.intervals["rising"]
    assert head.scores["rising"] == pytest.approx(0.5) and lo < 0.5 < hi and "rising" in head.roles


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_roles_are_refused_in_one_line():
    with pytest.raises(InputError, match="a role named 'induction' is already registered") as err:
        register_role(Role("induction", statistic="induction", threshold=0.5))
    one_line(err)
    with pytest.raises(InputError, match="role 'no_threshold' has no threshold") as err:
        Role("no_threshold", entries=bos_or_previous)
    one_line(err)
    with pytest.raises(InputError, match="exactly one of statistic, entries or score"):
        Role("both", statistic="induction", entries=bos_or_previous, threshold=0.4)
    with pytest.raises(InputError, match="uniform null exists only for an attention mass"):
        Role("weights", score=lambda m, d: None, threshold=0.4, null="uniform")
    with pytest.raises(InputError, match="uniform null exists only for an attention mass"):
        Role("spread", statistic="entropy", threshold=1.0)
    with pytest.raises(InputError, match=r"threshold for mass must be a number in \[0, 1\]"):
        Role("mass", statistic="previous_token", threshold=1.5)
    with pytest.raises(InputError, match="unknown statistic 'nope'"):
        Role("typo", statistic="nope", threshold=0.5)
    with pytest.raises(InputError, match="must be a Python identifier"):
        Role("bos-or-prev", entries=bos_or_previous, threshold=0.5)
    with pytest.raises(InputError, match="unknown role 'nothing'"):
        unregister_role("nothing")
    assert get_role("induction") is next(r for r in BUILT_IN_ROLES if r.name == "induction")  # the refused duplicate did not replace it


def test_a_wrong_score_shape_is_a_clear_error(forced_model):
    register_role(Role("wrong_shape", score=lambda model, dataset: torch.zeros(3), threshold=0.5))
    try:
        with pytest.raises(InputError, match=r"role wrong_shape: its score function gave shape \(3,\)"):
            classify_heads(forced_model, probe(4), n_bootstrap=20)
    finally:
        unregister_role("wrong_shape")


def test_the_built_in_roles_are_the_registry_and_the_docs_list_them():
    assert registered_roles(causal=True) == tuple(r for r in BUILT_IN_ROLES if r.causal)
    assert [r.name for r in registered_roles(causal=False)] == [
        "previous_token", "previous_token_norm", "induction", "induction_norm", "duplicate_token", "attention_sink",
        "attention_sink_norm", "self", "local", "next_token", "sep"]
    from pathlib import Path

    design = (Path(__file__).parents[2] / "docs" / "design.md").read_text()
    assert role_catalogue(BUILT_IN_ROLES) in design
    assert role_catalogue(OPTIONAL_ROLES) in design


def test_the_printed_table_leaves_out_what_a_score_role_does_not_have(forced_model, user_roles):
    from headscope.reports import role_lines

    with forced_model.hooks(forced_hooks()):
        lines = role_lines(classify_heads(forced_model, probe(6), n_bootstrap=50))
    planted = next(line for line in lines if "planted_score" in line)
    assert planted.split() == ["L1H2", "planted_score", "1.000"]
    previous = next(line for line in lines if line.split()[:2] == ["L0H0", "previous_token"])
    assert "[" in previous and "nan" not in "\n".join(lines)
    # Every score ends under the header's "score", however long the role names (previous_token_norm is 19).
    end = lines[1].index("score") + len("score")
    for line in lines[2:]:
        float(line[:end].split()[-1])  # the text ending there is the score
        assert line[end : end + 2] == "  ", line
    assert any("previous_token_norm" in line for line in lines)  # a role longer than the narrowest column


def test_weight_scores_register_as_roles():
    """analysis/ov_scores.py's OV copying score as two roles, copying and copy suppression (its negative),
    on the planted model of tests/analysis/test_ov_scores.py: its copying head scores +1, its suppression head -1."""
    from headscope.analysis.ov_scores import ov_copying_scores
    from headscope.capture.datasets import repeated_random_tokens
    from tests.analysis.test_ov_scores import COPY, ORDINAL, SUPPRESS, planted_model

    model = planted_model()
    roles = [Role("ov_copying", score=lambda m, d: ov_copying_scores(m, ORDINAL), threshold=0.5,
                  evidence="share of positive eigenvalues of W_E W_OV W_U", citation="Elhage et al. (2021)"),
             Role("copy_suppression", score=lambda m, d: -ov_copying_scores(m, ORDINAL), threshold=0.5,
                  evidence="negative OV copying score", citation="McDougall et al. (2023)")]
    for role in roles:
        register_role(role)
    try:
        table = classify_heads(model, repeated_random_tokens(4, 6, vocab_size=99, seed=0), n_bootstrap=20)
    finally:
        for role in roles:
            unregister_role(role.name)
    expected = ov_copying_scores(model, ORDINAL)
    assert [h.scores["ov_copying"] for h in table.heads] == expected[0].tolist()
    assert [h.name for h in table.with_role("ov_copying")] == [f"L0H{COPY}"]
    assert [h.name for h in table.with_role("copy_suppression")] == [f"L0H{SUPPRESS}"]
    meta = json.loads(table.to_json())["meta"]["role_definitions"]["ov_copying"]
    assert meta["scored_by"] == "score function" and meta["citation"] == "Elhage et al. (2021)"
    from headscope.viz import role_heatmap

    colours = role_heatmap(table).layout.coloraxis
    assert (colours.cmin, colours.cmax) == (-1, 1)  # the suppression head's -1 is on the scale
