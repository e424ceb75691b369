"""Role tables and the pieces of classify_heads on hand-made inputs: the CSV, rows and JSON of a table
written by hand, how one head is judged at the boundaries, option limits, the dataset and its shuffled
control, uniform nulls and the capture interval computed by hand."""

import json
import math

import pytest
import torch

from headscope.analysis import RoleTable, shuffled_control, uniform_null
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from tests.analysis.test_roles import probe
from tests.conftest import TINY_CONFIGS


def _table_by_hand() -> RoleTable:
    """Three heads of a 2 x 2 model scored on two roles, written out: L0H0 previous-token, L1H1 induction
    (and copies), L0H1 and L1H0 nothing."""
    from headscope.analysis.roles import HeadRoles

    def head(layer, head, prev, ind, roles, copying=None):
        return HeadRoles(layer, head, {"previous_token": prev, "induction": ind},
                         {"previous_token": (prev - 0.05, prev + 0.05), "induction": (ind - 0.1, ind + 0.1)},
                         {"previous_token": 0.2, "induction": 0.15}, roles,
                         {role: f"{role} because" for role in roles}, {}, copying)

    heads = (head(0, 0, 0.9, 0.1, ("previous_token",)), head(0, 1, 0.25, 0.5, ()),
             head(1, 0, 0.3, 0.2, ()), head(1, 1, 0.1, 0.8, ("induction",), copying=1.5))
    return RoleTable("tiny", 2, 2, heads, {"seed": 0})


def test_csv_rows_repr_and_html_of_a_table_written_by_hand():
    table = _table_by_hand()
    assert table.roles == ("previous_token", "induction")
    assert table.head(1, 0).layer == 1 and table.head(1, 0).head == 0 and table.head(0, 1).scores["induction"] == 0.5
    assert [h.name for h in table.heads_with_roles()] == ["L0H0", "L1H1"]  # top score 0.9, then 0.8
    assert [h.name for h in table.with_role("induction")] == ["L1H1"]
    assert table.head(0, 1).top_score == float("-inf") and table.head(1, 1).top_score == 0.8
    assert table.to_csv() == (
        "layer,head,name,kv_group,roles,previous_token,previous_token_lo,previous_token_hi,previous_token_null,"
        "induction,induction_lo,induction_hi,induction_null,copying\n"
        "0,0,L0H0,,previous_token,0.9,0.85,0.9500000000000001,0.2,0.1,0.0,0.2,0.15,\n"
        "0,1,L0H1,,,0.25,0.2,0.3,0.2,0.5,0.4,0.6,0.15,\n"
        "1,0,L1H0,,,0.3,0.25,0.35,0.2,0.2,0.1,0.30000000000000004,0.15,\n"
        "1,1,L1H1,,induction,0.1,0.05,0.15000000000000002,0.2,0.8,0.7000000000000001,0.9,0.15,1.5\n")
    assert RoleTable("tiny", 0, 0, (), {}).to_csv() == "layer,head\n"
    one = RoleTable("tiny", 1, 1, table.heads[:1], {})
    assert one.to_csv().splitlines()[1] == "0,0,L0H0,,previous_token,0.9,0.85,0.9500000000000001,0.2,0.1,0.0,0.2,0.15,"
    assert table.held_rows() == [
        {"head": "L0H0", "role": "previous_token", "score": 0.9, "95% interval": [0.85, 0.9500000000000001], "null": 0.2},
        {"head": "L1H1", "role": "induction", "score": 0.8, "95% interval": [0.7000000000000001, 0.9], "null": 0.15},
    ]
    assert repr(table) == ("RoleTable(model='tiny', heads='2x2', roles=['previous_token', 'induction'], "
                           "holding_roles=2)")
    page = table._repr_html_()
    assert "<caption>tiny: 2 of 4 heads hold roles</caption>" in page
    assert "<td>L0H0</td><td>previous_token</td><td>0.9</td><td>0.85, 0.95</td><td>0.2</td>" in page
    assert page.index("<td>L0H0</td>") < page.index("<td>L1H1</td>")


def test_a_saved_table_reads_back_and_is_checked_against_the_model(tmp_path):
    table = _table_by_hand()
    path = tmp_path / "roles.json"
    table.save(path)
    assert RoleTable.read(path) == table and json.loads(path.read_text())["n_heads"] == 2
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()  # 2 layers x 4 heads
    with pytest.raises(InputError, match=f"^{path} describes 2 x 2 heads, the model has 2 x 4$"):
        RoleTable.read(path, model)
    with pytest.raises(InputError, match="^cannot read role table .*missing.json: "):
        RoleTable.read(tmp_path / "missing.json")


def test_a_row_reads_back_with_what_it_left_out_empty():
    """A roles.json row holds scores and roles at least; intervals, nulls, reasons, rejected default to
    empty, copying to None; everything it does hold comes back, rejected reasons included."""
    from headscope.analysis.roles import HeadRoles

    bare = HeadRoles.from_dict({"layer": 1, "head": 2, "scores": {"self": 0.5}, "roles": []})
    assert bare == HeadRoles(1, 2, {"self": 0.5}, {}, {}, (), {}, {}, None)
    full = HeadRoles(0, 3, {"self": 0.7, "local": None}, {"self": (0.6, 0.8)}, {"self": 0.25}, (),
                     {}, {"self": "self 0.70 [0.60, 0.80] >= threshold 0.40, but ..."}, -0.5)
    back = HeadRoles.from_dict(json.loads(json.dumps(full.to_dict())))
    assert back.rejected == full.rejected and back.intervals == {"self": (0.6, 0.8)} and back.nulls == {"self": 0.25}
    assert back.copying == -0.5 and back.scores["self"] == 0.7 and back.scores["local"] != back.scores["local"]  # NaN


def test_judging_one_head_by_hand():
    """A score at the threshold counts; a lower end exactly at null + margin does not; reasons and the
    copying note say what was compared."""
    from headscope.analysis.role_registry import get_role
    from headscope.analysis.roles import _judge

    roles = tuple(get_role(name) for name in ("previous_token", "induction", "self"))
    grid = lambda value: torch.full((1, 1), value, dtype=torch.float64)  # noqa: E731
    scores = {"previous_token": grid(0.4), "induction": grid(0.9), "self": grid(0.6)}
    intervals = {"previous_token": (grid(0.375), grid(0.5)), "induction": (grid(0.8), grid(0.95)),
                 "self": (grid(0.25), grid(0.75))}
    nulls = {"previous_token": grid(0.125), "induction": grid(0.25), "self": grid(0.125)}
    limits = {"previous_token": 0.4, "induction": 0.4, "self": 0.4}
    head = _judge(0, 0, roles, scores, intervals, nulls, limits, 0.125, {(0, 0): 0.75})
    assert head.roles == ("previous_token", "induction")
    assert head.intervals == {"previous_token": (0.375, 0.5), "induction": (0.8, 0.95), "self": (0.25, 0.75)}
    assert head.reasons == {
        "previous_token": "previous_token 0.40 [0.38, 0.50] > null 0.12 (uniform attention)",
        "induction": "induction 0.90 [0.80, 0.95] > null 0.25 (shuffled control, same positions); raises the copied "
                     "token's logit (direct effect +0.75)"}
    assert head.rejected == {"self": "self 0.60 [0.25, 0.75] >= threshold 0.40, but its lower bound is not above "
                                     "null 0.12 (uniform attention) + margin 0.12"}
    assert head.copying == 0.75
    below = _judge(0, 0, roles, scores, intervals, nulls, {**limits, "previous_token": 0.41}, 0.125, {})
    assert below.roles == ("induction",) and "previous_token" not in below.rejected and below.copying is None
    assert below.reasons["induction"].endswith("(shuffled control, same positions)")  # no copying evidence
    none_copy = _judge(0, 0, roles, scores, intervals, nulls, limits, 0.125, {(0, 0): 0.0})
    assert none_copy.reasons["induction"].endswith("; does not raise the copied token's logit (direct effect +0.00)")


def test_options_are_checked_by_their_limits():
    from headscope.analysis.role_registry import registered_roles
    from headscope.analysis.roles import _check_options

    CAUSAL_ROLES = registered_roles(causal=True)
    limits = _check_options({"induction": 0.0, "self": 1, "sep": 0.5}, 0.0, 10, CAUSAL_ROLES)
    assert limits == {**{r.name: r.threshold for r in CAUSAL_ROLES}, "induction": 0.0, "self": 1.0}
    assert isinstance(limits["self"], float)  # "sep" is no role of a causal model: nothing to set
    with pytest.raises(InputError, match="^unknown role 'x'; roles: previous_token, "):
        _check_options({"x": 0.5}, 0.0, 10, CAUSAL_ROLES)
    for bad in (-0.1, 1.5, "0.5"):
        with pytest.raises(InputError, match="^threshold for self must be a "):
            _check_options({"self": bad}, 0.0, 10, CAUSAL_ROLES)
    _check_options(None, 0.999, 10, CAUSAL_ROLES)
    for bad in (1.0, -0.01, "0"):
        with pytest.raises(InputError, match=r"^margin must be in \[0, 1\), got "):
            _check_options(None, bad, 10, CAUSAL_ROLES)
    for bad in (9, 10.0):
        with pytest.raises(InputError, match="^n_bootstrap must be an integer of at least 10, got "):
            _check_options(None, 0.0, bad, CAUSAL_ROLES)


def test_the_dataset_is_made_or_refused_as_asked():
    from headscope.analysis.roles import MIN_SEQ_LEN, _resolve_dataset

    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    made = _resolve_dataset(model, None, MIN_SEQ_LEN, 1, 3)
    assert made.tokens.shape == (1, MIN_SEQ_LEN) and made.meta["seed"] == 3
    assert _resolve_dataset(model, "repeated-random:period=2", 3, 2, 0).tokens.shape == (2, 4)  # its own period
    assert _resolve_dataset(model, None, 8, 2, 0).tokens.shape == (2, 8)
    given = probe(1)
    assert _resolve_dataset(model, given, None, 16, 0) is given
    with pytest.raises(InputError, match="^the dataset is empty$"):
        _resolve_dataset(model, given.subset([0]).__class__(given.tokens[:0]), None, 16, 0)
    with pytest.raises(InputError, match="^dataset must be a TokenDataset, a dataset spec or a file path, got int$"):
        _resolve_dataset(model, 3, None, 16, 0)
    with pytest.raises(InputError, match="^num_prompts must be at least 1, got 0$"):
        _resolve_dataset(model, None, 8, 0, 0)
    with pytest.raises(InputError, match=f"^seq_len=3 is shorter than two periods .*seq_len >= {MIN_SEQ_LEN}$"):
        _resolve_dataset(model, "repeated-random", MIN_SEQ_LEN - 1, 1, 0)


def test_the_control_is_the_shuffle_its_meta_names_and_leaves_bos_and_padding():
    from headscope.capture.datasets import from_tensor

    tokens = torch.arange(1, 25).reshape(3, 8)
    mask = torch.ones_like(tokens)
    mask[1, 5:] = 0
    for has_bos in (True, False):
        data = from_tensor(tokens, attention_mask=mask, has_bos=has_bos)
        control = shuffled_control(data, seed=4)
        assert control.name == "tensor:shuffled" and control.meta["control"] == "tokens shuffled within each prompt"
        generator = torch.Generator().manual_seed(control.meta["control_seed"])
        start = 1 if has_bos else 0
        for row, length in enumerate([8, 5, 8]):
            order = torch.randperm(length - start, generator=generator) + start
            assert control.tokens[row, start:length].tolist() == tokens[row, order].tolist()
            assert control.tokens[row, length:].tolist() == tokens[row, length:].tolist()  # padding stays
        assert control.meta["control_seed"] == 5  # never the probe's own draw
        assert shuffled_control(data).meta["control_seed"] == 1  # the default seed is 0, as classify_heads'
        moved = (control.tokens != tokens).any(0)
        assert bool(moved[0]) != has_bos and bool(moved[1])  # BOS stays first; position 1 is shuffled too


def test_uniform_nulls_of_an_encoder_and_of_queries_that_never_count():
    from headscope.capture.datasets import from_tensor

    data = from_tensor(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    # encoder, previous_token: queries 1..3 of prompt 0 see 4 keys, 1..2 of prompt 1 see 3
    assert uniform_null(data, "previous_token", causal=False) == pytest.approx((3 / 4 + 2 / 3) / 5, rel=1e-12)
    assert uniform_null(data, "previous_token", causal=True) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 2 + 1 / 3) / 5,
                                                                              rel=1e-12)
    assert math.isnan(uniform_null(data, "duplicate_token", causal=True))  # no token repeats
    assert uniform_null(data, "current_token", causal=True) == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 2 + 1 / 3) / 5,
                                                                             rel=1e-12)  # row 0 has no choice
    assert uniform_null(data, "current_token", causal=False) == pytest.approx(2 / 7, rel=1e-12)
    once = from_tensor(torch.tensor([[1, 2, 1]]))  # one query with an earlier copy, seeing 3 keys
    assert uniform_null(once, "duplicate_token", causal=True) == pytest.approx(1 / 3, rel=1e-12)
    with pytest.raises(InputError, match="^entropy is not an attention mass: no uniform null$"):
        uniform_null(data, "entropy", causal=True)


def test_the_capture_interval_is_the_pooled_bootstrap_of_1000_draws_of_seed_0():
    from headscope.analysis.roles import bootstrap_interval as roles_interval
    from headscope.capture.result import CaptureResult

    sums = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0], dtype=torch.float64)
    counts = torch.tensor([4, 2, 5, 1, 6, 9, 3])
    result = CaptureResult({"self": sums[:, None, None]}, {"self": counts})
    draws = torch.randint(0, 7, (1000, 7), generator=torch.Generator().manual_seed(0))
    means = torch.stack([sums[d].sum() / counts[d].sum() for d in draws])
    for confidence, (lo_q, hi_q) in ((0.95, (0.025, 0.975)), (0.5, (0.25, 0.75))):
        low, high = roles_interval(result, "self", confidence=confidence) if confidence != 0.95 else \
            roles_interval(result, "self")
        assert float(low) == pytest.approx(float(torch.quantile(means, lo_q)), abs=1e-12)
        assert float(high) == pytest.approx(float(torch.quantile(means, hi_q)), abs=1e-12)


def test_a_head_read_without_intervals_shows_empty_ends():
    """Rows of old files may lack intervals: the CSV writes nan for their ends, the held rows an empty interval."""
    from headscope.analysis.roles import HeadRoles

    bare = HeadRoles(0, 0, {"self": 0.9}, {}, {}, ("self",), {"self": "old file"})
    table = RoleTable("old", 1, 1, (bare,), {})
    assert table.to_csv().splitlines()[1] == "0,0,L0H0,,self,0.9,nan,nan,,"
    assert table.held_rows() == [{"head": "L0H0", "role": "self", "score": 0.9, "95% interval": [], "null": None}]
