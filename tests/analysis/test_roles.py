"""classify_heads on models whose attention is forced by hooks, on random models, and on SmolLM2."""

import csv
import dataclasses
import io
import json

import pytest
import torch

from headscope.analysis.role_registry import BUILT_IN_ROLES
from headscope.analysis import RoleTable, bootstrap_interval, classify_heads, shuffled_control, uniform_null
from headscope.capture import capture
from headscope.capture.datasets import repeated_random_tokens
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS

PERIOD, VOCAB = 10, 64
BOS = VOCAB - 1
STRENGTH = 100.0
# Layer 0 heads, each forced to one behaviour by its queries (keys are one-hot positions):
#   H0 previous token, H1 induction (the token after the last earlier occurrence of the current token),
#   H2 self, H3 duplicate token (the last earlier occurrence). Layer 1: H0 attends to BOS, the rest
#   uniformly. H1 and H3 follow the tokens, read off the identity embedding, not the positions: a head
#   that looked at fixed offsets would score as high on the shuffled control and get no role.
#   The norm-weighted variants follow (random values of comparable norms). H1 and H3 fall back on BOS where
#   the token has no earlier occurrence, rows 0..PERIOD of 2 * PERIOD + 1: Gu's 0.3 makes them sinks too.
GU_FALLBACK = (PERIOD + 1) / (2 * PERIOD + 1)
EXPECTED = {(0, 0): ("previous_token", "previous_token_norm", "local"),
            (0, 1): ("induction", "induction_norm", "attention_sink_gu"), (0, 2): ("self",),
            (0, 3): ("duplicate_token", "attention_sink_gu"),
            (1, 0): ("attention_sink", "attention_sink_norm", "attention_sink_gu")}


def last_earlier_occurrence(row: list[int], i: int) -> int | None:
    earlier = [j for j in range(1, i) if row[j] == row[i]]
    return earlier[-1] if earlier else None


def forced_target(layer: int, head: int, i: int, row: list[int]) -> int | None:
    """The key query i of a prompt attends to (None: uniform)."""
    if layer == 1:
        return 0 if head == 0 else None
    if head in (1, 3):
        j = last_earlier_occurrence(row, i)
        return 0 if j is None else j + (1 if head == 1 else 0)
    return max(i - 1, 0) if head == 0 else i


def forced_hooks():
    running = {}

    def read_tokens(embed, hook):
        running["tokens"] = embed.argmax(-1).tolist()  # W_E is the identity: each embedding names its token

    def set_q(q, hook):
        layer = int(hook.name.split(".")[1])
        q = torch.zeros_like(q)
        for b, row in enumerate(running["tokens"]):
            for head in range(q.shape[2]):
                for i in range(q.shape[1]):
                    j = forced_target(layer, head, i, row)
                    if j is not None:
                        q[b, i, head, j] = STRENGTH
        return q

    def set_k(k, hook):
        k = torch.zeros_like(k)
        for j in range(k.shape[1]):
            k[:, j, :, j] = 1.0
        return k

    return [("hook_embed", read_tokens), (lambda n: n.endswith("attn.hook_q"), set_q),
            (lambda n: n.endswith("attn.hook_k"), set_k)]


def probe(n_prompts: int = 12, seed: int = 0):
    return repeated_random_tokens(n_prompts, PERIOD, 2, vocab_size=VOCAB, seed=seed, bos_token_id=BOS,
                                  exclude_ids=[BOS])


@pytest.fixture(scope="module")
def forced_model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY_CONFIGS["attn-only"], d_head=48, d_model=VOCAB, d_vocab=VOCAB)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        model.embed.W_E.copy_(torch.eye(VOCAB))
    return model


@pytest.fixture(scope="module")
def forced_table(forced_model) -> RoleTable:
    with forced_model.hooks(forced_hooks()):
        return classify_heads(forced_model, probe(), n_bootstrap=200)


def test_forced_heads_get_exactly_their_roles(forced_table):
    for row in forced_table.heads:
        assert row.roles == EXPECTED.get((row.layer, row.head), ()), (row.name, row.roles, row.reasons)
        for role in row.roles:
            lo, hi = row.intervals[role]
            assert lo <= row.scores[role] <= hi
            expected = GU_FALLBACK if role == "attention_sink_gu" and row.layer == 0 else 1.0
            assert row.scores[role] == pytest.approx(expected, abs=0.05)
            assert row.reasons[role].startswith(f"{role} {row.scores[role]:.2f} [")
    induction = forced_table.head(0, 1)
    assert "(shuffled control, same positions)" in induction.reasons["induction"] and induction.nulls["induction"] < 0.2
    assert "(uniform attention)" in forced_table.head(0, 0).reasons["previous_token"]
    scores = [h.top_score for h in forced_table.heads_with_roles()]
    assert scores == sorted(scores, reverse=True)


def test_a_head_may_hold_two_roles(forced_table):
    assert set(forced_table.head(0, 0).roles) == {"previous_token", "previous_token_norm", "local"}


def test_uniform_heads_score_their_null_and_get_nothing(forced_table):
    uniform = forced_table.head(1, 1)
    assert uniform.roles == ()
    for role in ("previous_token", "attention_sink", "self", "local"):
        assert uniform.scores[role] == pytest.approx(uniform.nulls[role], abs=1e-5)


def test_uniform_null_is_exact():
    dataset = probe(2)
    # previous_token counts queries 2..20 (BOS at 0); uniform causal attention gives 1 / (i + 1) at each.
    expected = sum(1 / (i + 1) for i in range(2, 2 * PERIOD + 1)) / (2 * PERIOD - 1)
    assert uniform_null(dataset, "previous_token", causal=True) == pytest.approx(expected, rel=1e-12)


def test_a_high_score_without_the_role_says_why(forced_model):
    with forced_model.hooks(forced_hooks()):
        table = classify_heads(forced_model, probe(), n_bootstrap=200, margin=0.99 - 1e-9)
    assert table.head(0, 2).roles == ()
    assert "lower bound is not above null" in table.head(0, 2).rejected["self"]


def test_random_models_get_no_induction_role(tiny_model):
    table = classify_heads(tiny_model, seq_len=40, num_prompts=8, n_bootstrap=200)
    assert not table.with_role("induction")
    assert all("induction" not in h.roles for h in table.heads)
    assert set(table.roles) == {r.name for r in BUILT_IN_ROLES if r.available(tiny_model)}
    signed = {"copying", "negative_copying"}  # OV copying scores lie in [-1, 1]
    assert all(0 <= v <= 1 for h in table.heads for r, v in h.scores.items() if r not in signed)
    assert not any(signed & set(h.roles) for h in table.heads)  # random weights
    assert all(h.copying is None for h in table.heads)


def test_json_has_the_agreed_shape_and_round_trips(forced_table):
    data = json.loads(forced_table.to_json())
    assert set(data) == {"model", "n_layers", "n_heads", "results", "meta"}
    assert isinstance(data["model"], str) and data["n_layers"] == 2 and data["n_heads"] == 4
    assert {"dataset", "seq_len", "num_prompts", "seed", "headscope_version"} <= set(data["meta"])
    assert len(data["results"]) == 8
    for row in data["results"]:
        assert {"heads", "layer", "head", "scores", "roles"} <= set(row)
        assert row["heads"] == [f"L{row['layer']}H{row['head']}"]
        assert isinstance(row["layer"], int) and isinstance(row["head"], int)
        assert {"previous_token", "induction", "duplicate_token", "attention_sink", "self"} <= set(row["scores"])
        assert all(isinstance(v, float) for v in row["scores"].values())
        assert all(isinstance(r, str) for r in row["roles"])
    assert RoleTable.from_json(forced_table.to_json()) == forced_table
    rows = data.pop("results")
    legacy = {**data, "heads": rows}  # headscope 0.1 wrote the rows under "heads"
    assert RoleTable.from_json(json.dumps(legacy)) == forced_table
    with pytest.raises(InputError, match="not a headscope role table"):
        RoleTable.from_json('{"model": "x"}')


def test_csv_parses(forced_table):
    rows = list(csv.DictReader(io.StringIO(forced_table.to_csv())))
    assert len(rows) == 8
    assert {"name", "roles", "induction", "induction_lo", "induction_hi", "self"} <= set(rows[0])
    by_name = {r["name"]: r for r in rows}
    assert by_name["L0H0"]["roles"] == ";".join(EXPECTED[(0, 0)])
    assert float(by_name["L0H1"]["induction"]) == forced_table.head(0, 1).scores["induction"]


def test_to_frame_has_a_row_per_head(forced_table):
    pd = pytest.importorskip("pandas")
    frame = forced_table.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 8


def test_bootstrap_intervals_shrink_with_more_prompts_and_are_reproducible():
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    result = capture(model, probe(64), ["previous_token", "induction"], progress=False)
    few = capture(model, probe(64).subset(range(8)), ["previous_token", "induction"], progress=False)
    for stat in ("previous_token", "induction"):
        lo, hi = bootstrap_interval(result, stat, 500, seed=1)
        lo8, hi8 = bootstrap_interval(few, stat, 500, seed=1)
        assert (hi - lo).mean() < 0.7 * (hi8 - lo8).mean()
        assert bool((lo <= result.mean(stat)).all() and (result.mean(stat) <= hi).all())
        again = bootstrap_interval(result, stat, 500, seed=1)
        assert torch.equal(again[0], lo) and torch.equal(again[1], hi)
        other = bootstrap_interval(result, stat, 500, seed=2)
        assert not torch.equal(other[0], lo)


def test_the_control_shuffles_within_prompts_and_keeps_bos():
    dataset = probe(4)
    before = dataset.tokens.clone()
    control = shuffled_control(dataset, seed=0)
    assert torch.equal(dataset.tokens, before)  # the input is not changed
    assert bool((control.tokens[:, 0] == BOS).all())
    assert torch.equal(control.tokens.sort(1).values, dataset.tokens.sort(1).values)
    assert not torch.equal(control.tokens, dataset.tokens)
    assert torch.equal(shuffled_control(dataset, seed=0).tokens, control.tokens)


def test_bad_input_is_a_clear_error(tmp_path):
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()  # no tokenizer
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        classify_heads(model, str(empty))
    text = tmp_path / "prompts.txt"
    text.write_text("hello world\n")
    with pytest.raises(InputError, match="no tokenizer"):
        classify_heads(model, str(text))
    with pytest.raises(InputError, match="shorter than two periods"):
        classify_heads(model, seq_len=3)
    with pytest.raises(InputError, match="unknown role 'inductio'"):
        classify_heads(model, thresholds={"inductio": 0.5})
    with pytest.raises(InputError, match="threshold for induction must be a number in"):
        classify_heads(model, thresholds={"induction": 2})
    with pytest.raises(InputError, match="^classify_heads needs a headscope HookedTransformer, got object: load it "
                                         "with headscope.load_model$"):
        classify_heads(object())


@pytest.mark.real_model
def test_smollm2_induction_heads_are_its_top_scorers_and_copy(smollm2):
    table = classify_heads(smollm2, seq_len=64, num_prompts=8, n_bootstrap=500)
    induction = table.with_role("induction")
    assert induction, "SmolLM2 has induction heads"
    ranked = sorted(table.heads, key=lambda h: -h.scores["induction"])
    top = {h.name for h in ranked[: max(8, 2 * len(induction))]}
    assert {h.name for h in induction} <= top
    assert any(h.copying is not None and h.copying > 0 for h in induction)
    assert any("raises the copied token's logit" in h.reasons["induction"] for h in induction)
    assert table.with_role("previous_token") and table.with_role("attention_sink")


@pytest.mark.real_model
def test_a_random_model_of_smollm2s_shape_gets_no_induction_role(smollm2):
    torch.manual_seed(0)
    random_model = HookedTransformer(smollm2.cfg, smollm2.tokenizer).eval()
    random_model.init_weights()
    table = classify_heads(random_model, seq_len=64, num_prompts=8, n_bootstrap=200)
    assert not table.with_role("induction") and not table.with_role("duplicate_token")


@torch.no_grad()
def test_a_fixed_offset_head_is_not_an_induction_head(forced_model):
    """On repeated random tokens, attending PERIOD - 1 back hits every induction target by position alone."""

    def set_q(q, hook):
        q = torch.zeros_like(q)
        for i in range(q.shape[1]):
            q[:, i, :, i - PERIOD + 1 if i > PERIOD else 0] = STRENGTH
        return q

    def set_k(k, hook):
        k = torch.zeros_like(k)
        for j in range(k.shape[1]):
            k[:, j, :, j] = 1.0
        return k

    hooks = [(lambda n: n.endswith("attn.hook_q"), set_q), (lambda n: n.endswith("attn.hook_k"), set_k)]
    with forced_model.hooks(hooks):
        table = classify_heads(forced_model, probe(), n_bootstrap=200)
    head = table.heads[0]
    assert head.scores["induction"] > 0.95  # the attention is all on the targets...
    assert "induction" not in head.roles  # ...but the control, same positions, scores as high
    assert head.nulls["induction"] > 0.95 and "induction" in head.rejected
    # The norm-weighted score is judged against the same control, scored at the probe's targets.
    assert head.scores["induction_norm"] > 0.95 and head.nulls["induction_norm"] > 0.95
    assert "induction_norm" not in head.roles and "induction_norm" in head.rejected


class Interrupt(Exception):
    pass


@torch.no_grad()
def test_an_interrupted_classification_resumes_without_recounting_the_finished_capture(tmp_path):
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["attn-only"]).eval()
    data = repeated_random_tokens(6, 8, vocab_size=99, seed=0, bos_token_id=98, exclude_ids=[98])
    forwards = []
    with model.hooks([("hook_embed", lambda t, hook: forwards.append(1))]):
        whole = classify_heads(model, data, n_bootstrap=50)
    per_run = len(forwards)  # the probe capture, the control capture, the copying scores

    def stop_at_the_control(tensor, hook):
        forwards.append(1)
        if len(forwards) == 2:
            raise Interrupt

    forwards.clear()
    with pytest.raises(Interrupt), model.hooks([("hook_embed", stop_at_the_control)]):
        classify_heads(model, data, n_bootstrap=50, resume=tmp_path)
    assert (tmp_path / "probe.progress.safetensors").exists()  # the finished probe capture waits there
    forwards.clear()
    with model.hooks([("hook_embed", lambda t, hook: forwards.append(1))]):
        resumed = classify_heads(model, data, n_bootstrap=50, resume=tmp_path)
    assert len(forwards) == per_run - 1  # the probe capture was not run again
    assert resumed.to_json() == whole.to_json()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("window", "has_role"), [(6, False), (12, True)])
def test_a_local_head_is_an_induction_head_only_within_its_window(forced_model, window, has_role):
    """Layer 0 made local: its planted induction head H1 looks PERIOD - 1 = 9 keys back, which a window of
    6 hides (the head can then only spread over its window) and a window of 12 shows."""
    from headscope.loading import LoadedModel

    cfg = dataclasses.replace(forced_model.cfg, windows=(window, None))
    model = HookedTransformer.from_loaded(LoadedModel(cfg, dict(forced_model.state_dict()))).eval()
    with model.hooks(forced_hooks()):
        table = classify_heads(model, probe(), n_bootstrap=200)
    induction = table.head(0, 1)
    assert ("induction" in induction.roles) == has_role, (induction.scores, induction.reasons)
    assert (induction.scores["induction"] > 0.95) == has_role
    assert table.head(0, 0).roles == EXPECTED[(0, 0)]  # one key back: inside every window


def test_the_table_says_how_it_was_made(forced_table, forced_model):
    meta = forced_table.meta
    assert (forced_table.model, forced_table.n_layers, forced_table.n_heads) == (forced_model.name, 2, 4)
    assert meta["dataset"] == "repeated-random" and meta["dataset_meta"] == probe().meta
    assert (meta["seq_len"], meta["num_prompts"], meta["seed"]) == (2 * PERIOD + 1, 12, 0)
    # The classic roles' thresholds and nulls, written out; every built-in role is there.
    classic = {"previous_token": 0.4, "induction": 0.4, "duplicate_token": 0.4, "attention_sink": 0.6, "self": 0.4,
               "local": 0.6}
    assert {name: meta["thresholds"][name] for name in classic} == classic
    assert set(meta["thresholds"]) == set(meta["nulls"]) == {role.name for role in BUILT_IN_ROLES if role.available(forced_model)}
    assert (meta["margin"], meta["n_bootstrap"], meta["confidence"]) == (0.05, 200, 0.95)
    assert {name: meta["nulls"][name] for name in classic} == {
        "previous_token": "uniform attention", "induction": "shuffled control, same positions",
        "duplicate_token": "shuffled control, same positions", "attention_sink": "uniform attention",
        "self": "uniform attention", "local": "uniform attention"}
    # The positional nulls are the exact uniform-attention values, in float64.
    assert forced_table.head(1, 2).nulls["previous_token"] == uniform_null(probe(), "previous_token", causal=True)
    # Only the induction candidate (score above the induction threshold) gets a copying score, and its reason says it.
    assert [h.name for h in forced_table.heads if h.copying is not None] == ["L0H1"]
    copying = forced_table.head(0, 1).copying
    verb = "raises" if copying > 0 else "does not raise"
    assert forced_table.head(0, 1).reasons["induction"].endswith(
        f"(shuffled control, same positions); {verb} the copied token's logit (direct effect {copying:+.2f})")
    text = forced_table.to_json()
    assert text.startswith('{\n  "model": ') and "\n" not in forced_table.to_json(indent=None)
    row = json.loads(text)["results"][0]
    assert set(row) == {"heads", "layer", "head", "kv_group", "scores", "roles", "intervals", "nulls", "reasons",
                        "rejected", "copying"}


def test_a_nested_resume_folder_is_made_and_a_file_in_its_place_refused(forced_model, tmp_path):
    nested = tmp_path / "a" / "b"
    with forced_model.hooks(forced_hooks()):
        table = classify_heads(forced_model, probe(4), n_bootstrap=20, resume=nested)
    assert nested.is_dir() and not any(nested.iterdir())  # the progress files are removed at the end
    assert table.head(0, 0).roles == EXPECTED[(0, 0)]
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=f"^cannot create the resume folder {blocker}: "):
        classify_heads(forced_model, probe(4), n_bootstrap=20, resume=blocker)


def test_to_frame_without_pandas_says_how_to_get_it(forced_table, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"^RoleTable.to_frame needs pandas: pip install pandas \(or use to_csv / to_json\)$"):
        forced_table.to_frame()


def test_defaults_and_the_seed_reach_the_dataset_and_the_intervals():
    """Without options: 16 repeated-random prompts of 64 tokens (62 in a context of 64), seed 0, 1000
    resamples; a seed given is the one the intervals are drawn with (the capture's bootstrap of that seed)."""
    torch.manual_seed(3)
    model = HookedTransformer(TINY_CONFIGS["attn-only"]).eval()
    table = classify_heads(model)
    assert (table.meta["num_prompts"], table.meta["seq_len"], table.meta["seed"], table.meta["n_bootstrap"]) == \
        (16, 62, 0, 1000)
    data = probe(6)
    seeded = classify_heads(model, data, seed=3, n_bootstrap=50)
    low, high = bootstrap_interval(capture(model, data, ["previous_token"], progress=False), "previous_token", 50, seed=3)
    assert seeded.head(1, 2).intervals["previous_token"] == (float(low[1, 2]), float(high[1, 2]))
    assert low[1, 2] < high[1, 2]


def test_copying_is_scored_for_heads_at_or_above_the_induction_threshold_of_a_model_with_logits():
    from headscope.analysis.role_registry import get_role
    from headscope.analysis.roles import _copying_candidates

    def candidates(model, induction, threshold):
        return _copying_candidates(model, probe(2), (get_role("induction"),), {"induction": induction},
                                   {"induction": threshold}, None)

    torch.manual_seed(5)
    model = HookedTransformer(dataclasses.replace(TINY_CONFIGS["attn-only"], d_vocab=VOCAB)).eval()
    induction = torch.zeros(2, 4, dtype=torch.float64)
    induction[1, 2], induction[0, 3] = 0.4, 0.39
    scores = candidates(model, induction, 0.4)
    assert set(scores) == {(1, 2)} and isinstance(scores[(1, 2)], float)
    assert candidates(model, induction, 0.5) == {}  # no candidate
    encoder = HookedTransformer(dataclasses.replace(TINY_CONFIGS["bert"], d_vocab=VOCAB)).eval()
    assert candidates(encoder, induction, 0.4) == {}  # no logits to copy into


def test_the_control_is_shuffled_with_the_classify_seed(forced_model):
    data = probe(4)
    with forced_model.hooks(forced_hooks()):
        table = classify_heads(forced_model, data, seed=7, n_bootstrap=20)
        nulls = [float(capture(forced_model, shuffled_control(data, seed), ["induction"], plan_dataset=data,
                               progress=False).mean("induction")[0, 1]) for seed in (7, 0)]
    assert table.head(0, 1).nulls["induction"] == nulls[0] != nulls[1]
