"""Choosing the roles classify scores: only the chosen roles are scored and written, only their work runs
(forward passes counted by a hook, eigendecompositions seen by the profiler), optional built-in roles are
chosen by name, and unknown or inapplicable roles are refused with the reason."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from headscope.analysis import Role, classify_heads, get_role, registered_roles, shuffled_control
from headscope.analysis.lengths import classify_across_lengths
from headscope.analysis.retrieval import RETRIEVAL_ROLE, retrieval_scores
from headscope.analysis.role_registry import OPTIONAL_ROLES, choose_roles, known_role_names
from headscope.capture import capture
from headscope.capture.datasets import repeated_random_tokens
from headscope.errors import InputError
from tests.analysis.test_circuit_roles import ioi_word_model
from tests.analysis.test_roles import forced_hooks, forced_model, probe  # noqa: F401
from tests.conftest import build_tiny_model


def test_only_the_chosen_roles_are_scored_and_written(forced_model):
    dataset = probe(8)
    with forced_model.hooks(forced_hooks()):
        everything = classify_heads(forced_model, dataset, n_bootstrap=50)
        chosen = classify_heads(forced_model, dataset, n_bootstrap=50, roles=["self", "induction"])
    assert chosen.roles == ("self", "induction")  # in the order chosen
    for row, full in zip(chosen.heads, everything.heads):
        assert row.scores == {r: full.scores[r] for r in ("self", "induction")}
        assert row.roles == tuple(r for r in full.roles if r in ("self", "induction"))
        assert row.copying == full.copying  # induction's copying evidence stays
    assert chosen.head(0, 1).copying is not None
    data = json.loads(chosen.to_json())
    assert set(data["meta"]["thresholds"]) == set(data["meta"]["role_definitions"]) == {"self", "induction"}
    assert all(set(r["scores"]) == {"self", "induction"} for r in data["results"])
    columns = next(csv.reader(io.StringIO(chosen.to_csv())))
    assert not [c for c in columns if c.startswith(("previous_token", "duplicate", "local", "attention_sink"))]
    from headscope.viz import role_heatmap

    assert [t.name for t in role_heatmap(chosen).data] == ["self", "induction"]


def count_forward_passes(model):
    """A hook on the embedding, which every forward pass runs once, and the count it keeps."""
    count = {"passes": 0}

    def tick(x, hook):
        count["passes"] += 1

    return count, [("hook_embed", tick)]


def test_choosing_induction_runs_only_its_two_captures():
    """On a model every role applies to (an unembedding, IOI names), the default classification runs the
    sink, dormant and norm-weighted passes, the name movers' 16 prompts and the OV eigendecompositions;
    choosing induction runs the probe and control captures and nothing else (random weights: no induction
    candidate, so no copying pass either)."""
    model = ioi_word_model(planted=False)
    dataset = repeated_random_tokens(4, 5, vocab_size=model.cfg.d_vocab, seed=0)
    count, hooks = count_forward_passes(model)
    with model.hooks(hooks):
        capture(model, dataset, ["induction"])
        capture(model, shuffled_control(dataset, 0), ["induction"], plan_dataset=dataset)
        two_captures, count["passes"] = count["passes"], 0
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as chosen_ops:
            table = classify_heads(model, dataset, n_bootstrap=20, roles=["induction"])
        chosen_passes, count["passes"] = count["passes"], 0
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as default_ops:
            default = classify_heads(model, dataset, n_bootstrap=20)
    assert table.roles == ("induction",) and all(h.copying is None for h in table.heads)
    assert chosen_passes == two_captures
    assert {"dormant", "induction_norm", "name_mover", "copying"} <= set(default.roles)
    assert count["passes"] >= two_captures + 16  # the name movers' prompts alone are 16 passes
    assert "aten::_linalg_eigvals" in {e.key for e in default_ops.key_averages()}  # the OV copying score's work
    assert "aten::_linalg_eigvals" not in {e.key for e in chosen_ops.key_averages()}


def test_an_optional_built_in_role_is_chosen_by_name_and_not_scored_by_default():
    model = build_tiny_model("gpt2")
    assert "retrieval" in known_role_names() and RETRIEVAL_ROLE in OPTIONAL_ROLES
    assert get_role("retrieval") is RETRIEVAL_ROLE and RETRIEVAL_ROLE not in registered_roles()
    dataset = repeated_random_tokens(3, 4, vocab_size=model.cfg.d_vocab, seed=0)
    assert "retrieval" not in classify_heads(model, dataset, n_bootstrap=20).roles
    table = classify_heads(model, dataset, n_bootstrap=20, roles=["retrieval"])
    assert table.roles == ("retrieval",)
    expected = retrieval_scores(model).scores
    assert [h.scores["retrieval"] for h in table.heads] == expected.flatten().tolist()


def test_a_role_object_is_chosen_without_registering_it(forced_model):
    ones = Role("everywhere", score=lambda model, dataset: torch.ones(2, 4), threshold=0.5)
    table = classify_heads(forced_model, probe(4), n_bootstrap=20, roles=[ones, "self"])
    assert table.roles == ("everywhere", "self") and len(table.with_role("everywhere")) == 8
    assert "everywhere" not in known_role_names()


def one_line(err) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_unknown_inapplicable_and_repeated_roles_are_refused_with_the_reason():
    gpt2, bert = build_tiny_model("gpt2"), build_tiny_model("bert")
    with pytest.raises(InputError, match="unknown role 'inductoin'; roles: previous_token, .*, retrieval") as err:
        choose_roles(gpt2, ["induction", "inductoin"])
    assert err.value.parameter == "roles" and one_line(err)
    with pytest.raises(InputError, match="role sep cannot be scored on .*: it applies to encoder models only and "
                                         "this model is causal") as err:
        choose_roles(gpt2, ["sep"])
    one_line(err)
    with pytest.raises(InputError, match="role copying cannot be scored on .*: it applies to causal models only"):
        choose_roles(bert, ["copying"])
    with pytest.raises(InputError, match="role successor cannot be scored on .*: it needs an unembedding and a "
                                         "tokenizer with two neighbouring ordinal items"):
        choose_roles(gpt2, ["successor"])  # a tiny model without a tokenizer
    with pytest.raises(InputError, match="role name_mover cannot be scored .*three single-token IOI names"):
        classify_heads(gpt2, seq_len=8, num_prompts=2, roles=["name_mover"])
    with pytest.raises(InputError, match="role self is chosen twice"):
        choose_roles(gpt2, ["self", "self"])
    with pytest.raises(InputError, match="no role chosen"):
        choose_roles(gpt2, [])
    with pytest.raises(InputError, match="a threshold is given for induction, which is not among the chosen roles"):
        classify_heads(gpt2, seq_len=8, num_prompts=2, roles=["self"], thresholds={"induction": 0.5})
    assert [r.name for r in choose_roles(gpt2, "self")] == ["self"]


def test_a_length_sweep_scores_the_chosen_roles_and_follows_one_of_them():
    model = build_tiny_model("gpt2")
    sweep = classify_across_lengths(model, [6, 10], roles=["self", "previous_token"], num_prompts=3, n_bootstrap=20)
    assert sweep.role == "self"  # induction is not chosen: the first chosen role is followed
    assert all(t.roles == ("self", "previous_token") for t in sweep.tables)
    with pytest.raises(InputError, match="role induction is followed across lengths but not among the roles "
                                         r"scored \(self\)") as err:
        classify_across_lengths(model, [6, 10], role="induction", roles=["self"], num_prompts=3)
    assert err.value.parameter == "role"
    with pytest.raises(InputError, match="unknown role 'nope'"):
        classify_across_lengths(model, [6, 10], roles=["nope"], num_prompts=3)


def test_every_built_in_role_without_a_null_says_why():
    from headscope.analysis.role_registry import BUILT_IN_ROLES

    for role in BUILT_IN_ROLES + OPTIONAL_ROLES:
        if role.score is not None or role.null is None:
            assert role.null is not None or role.null_reason, role.name
    assert get_role("copying").describe()["null"] == "no null (weights only: no prompt to control)"
    assert get_role("copy_suppression").describe()["null"] == "the same score on the shuffled control, same positions"
    with pytest.raises(InputError, match="null_reason says why a role has no null"):
        Role("both", statistic="induction", threshold=0.4, null="shuffled", null_reason="none fits")
