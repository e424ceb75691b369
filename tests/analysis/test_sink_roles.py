"""Gu sinks, dormant heads and norm-weighted roles: planted heads recovered, random models get none, and every
score equal to a slow hand computation from the pattern and the weights."""

import contextlib

import pytest
import torch

from headscope.analysis import classify_heads
from headscope.analysis.role_registry import register_role, registered_roles, unregister_role
from headscope.analysis.sink_roles import (ATTENTION_SINK_GU, NORM_STATISTICS, PATTERN_MEMORY, dormant_scores,
                                           norm_score, sink_scores)
from headscope.capture import capture
from headscope.capture.datasets import TokenDataset
from headscope.capture.statistics import BUILT_IN, Batch, make_plans
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from headscope.loading import LoadedModel
from tests.analysis.test_roles import BOS, forced_hooks, forced_model, probe  # noqa: F401
from tests.conftest import build_tiny_model

NEW_ROLES = {"attention_sink_gu", "dormant", "previous_token_norm", "attention_sink_norm", "induction_norm"}


def edited(model: HookedTransformer, edit) -> HookedTransformer:
    """A copy of `model` with `edit(state_dict)` applied to its weights."""
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    edit(state)
    return HookedTransformer.from_loaded(LoadedModel(model.cfg, state)).eval()


def table_of(model):
    with model.hooks(forced_hooks()):
        return classify_heads(model, probe(), n_bootstrap=200)


def test_a_sink_head_with_large_values_is_a_gu_sink_and_not_dormant(forced_model):
    sink = table_of(forced_model).head(1, 0)  # forced onto BOS, its random values untouched
    assert {"attention_sink", "attention_sink_gu", "attention_sink_norm"} <= set(sink.roles)
    assert "dormant" not in sink.roles and sink.scores["dormant"] == 0.0
    assert sink.scores["attention_sink_gu"] > 0.99


def test_the_same_head_with_w_o_zeroed_is_dormant(forced_model):
    def zero_output(state):
        state["blocks.1.attn.W_O"][0] = 0.0

    table = table_of(edited(forced_model, zero_output))
    sink = table.head(1, 0)
    assert {"attention_sink", "attention_sink_gu", "dormant"} <= set(sink.roles)
    assert sink.scores["dormant"] == 1.0
    assert sink.scores["attention_sink_norm"] < 0.01 and "attention_sink_norm" not in sink.roles
    assert [h.name for h in table.with_role("dormant")] == ["L1H0"]


def test_a_tiny_value_at_bos_drops_the_norm_weighted_sink_score(forced_model):
    def silence_bos(state):
        state["pos_embed.W_pos"].zero_()  # BOS's residual at layer 1 is its one-hot embedding alone:
        state["blocks.0.attn.W_O"].zero_()  # no position, and layer 0 writes nothing (layer 1 is forced anyway)
        state["blocks.1.attn.W_V"][0, BOS] = 0.0  # head 0's value of BOS is 0, of every other token not

    sink = table_of(edited(forced_model, silence_bos)).head(1, 0)
    assert sink.scores["attention_sink"] > 0.99 and "attention_sink" in sink.roles
    assert sink.scores["attention_sink_norm"] < 0.01 and "attention_sink_norm" not in sink.roles


@pytest.mark.parametrize("name", ["attn-only", "llama-gqa", "gpt2", "bert", "sinks"])
def test_random_models_get_none_of_the_new_roles(name):
    model = build_tiny_model(name)
    table = classify_heads(model, num_prompts=8, n_bootstrap=200)  # 64 tokens, or what fits
    assert not any(NEW_ROLES & set(h.roles) for h in table.heads), [(h.name, h.roles) for h in table.heads]
    expected = NEW_ROLES if model.cfg.causal else {"previous_token_norm", "attention_sink_norm", "induction_norm"}
    assert expected <= set(table.roles)


def padded_dataset(vocab: int) -> TokenDataset:
    torch.manual_seed(1)
    tokens = torch.randint(1, vocab, (3, 9))
    tokens[:, 4:8] = tokens[:, 0:4]  # repeats, so induction has queries
    mask = torch.ones_like(tokens)
    mask[1, 6:] = 0  # a padded prompt
    tokens[1, 6:] = 0
    return TokenDataset(tokens, mask)


def slow_terms(model, dataset, prompt: int, layer: int):
    """(pattern (head, q, k), value norms (head, k)) of one prompt, unpadded, by loops over heads and keys."""
    n = int(dataset.attention_mask[prompt].sum())
    _, cache = model.run_with_cache(dataset.tokens[prompt : prompt + 1, :n])
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].double()
    v = cache[f"blocks.{layer}.attn.hook_v"][0].double()  # (pos, kv_head, d_head)
    attn = model.blocks[layer].attn
    group = model.cfg.n_heads // model.cfg.kv_heads
    norms = torch.tensor([[float((v[j, h // group] @ attn.W_O[h].detach().double()).norm()) for j in range(n)]
                          for h in range(model.cfg.n_heads)], dtype=torch.float64)
    return pattern, norms


@pytest.mark.parametrize("name", ["attn-only", "llama-gqa"])
def test_norm_weighted_scores_equal_a_hand_computation(name):
    model = build_tiny_model(name)
    dataset = padded_dataset(model.cfg.d_vocab)
    prev, sink, induction = (norm_score(s)(model, dataset) for s in ("previous_token", "attention_sink", "induction"))
    for prompt in range(len(dataset)):
        toks = dataset.tokens[prompt].tolist()
        n = int(dataset.attention_mask[prompt].sum())
        for layer in range(model.cfg.n_layers):
            pattern, norms = slow_terms(model, dataset, prompt, layer)
            for h in range(model.cfg.n_heads):
                weighted = [[float(pattern[h, i, j]) * float(norms[h, j]) for j in range(n)] for i in range(n)]
                rows = [[w / sum(row) for w in row] for row in weighted]
                expected_prev = sum(rows[i][i - 1] for i in range(1, n)) / (n - 1)
                assert prev[prompt, layer, h] == pytest.approx(expected_prev, abs=1e-5)
                assert sink[prompt, layer, h] == pytest.approx(sum(rows[i][0] for i in range(1, n)) / (n - 1), abs=1e-5)
                hits = [sum(rows[i][j + 1] for j in range(i) if toks[j] == toks[i]) for i in range(n)
                        if toks[i] in toks[:i]]
                assert induction[prompt, layer, h] == pytest.approx(sum(hits) / len(hits), abs=1e-5)


def test_gu_sink_score_equals_a_hand_computation():
    model = build_tiny_model("llama-gqa")
    dataset = padded_dataset(model.cfg.d_vocab)
    stat = capture(model, dataset, [BUILT_IN["attention_sink"]])  # Xiao's: row 0 left out
    gu = capture(model, dataset, [ATTENTION_SINK_GU.capture_statistic])
    total, count = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64), 0
    for prompt in range(len(dataset)):
        for layer in range(model.cfg.n_layers):
            pattern, _ = slow_terms(model, dataset, prompt, layer)
            total[layer] += pattern[:, :, 0].sum(-1)  # every query, row 0 (where A = 1) included
        count += int(dataset.attention_mask[prompt].sum())
    assert torch.allclose(gu.mean("attention_sink_gu").double(), total / count, atol=1e-5)
    assert not torch.allclose(stat.mean("attention_sink").double(), total / count, atol=1e-3)


def onto_first_token(pattern, hook):
    """Layer 1 head 2 looks only at the first token."""
    pattern = pattern.clone()
    pattern[:, 2] = 0.0
    pattern[:, 2, :, 0] = 1.0
    return pattern


def test_dormant_score_equals_a_hand_computation():
    model = build_tiny_model("llama-gqa")
    with torch.no_grad():
        model.blocks[1].attn.W_O[2] *= 0.01  # and says almost nothing
    dataset = padded_dataset(model.cfg.d_vocab)
    with model.hooks([("blocks.1.attn.hook_pattern", onto_first_token)]):
        scores = dormant_scores(model, dataset)
    assert scores[:, 1, 2].tolist() == [1.0] * len(dataset) and scores.sum() == len(dataset)
    for prompt in range(len(dataset)):
        n = int(dataset.attention_mask[prompt].sum())
        with model.hooks([("blocks.1.attn.hook_pattern", onto_first_token)]):
            _, cache = model.run_with_cache(dataset.tokens[prompt : prompt + 1, :n])
        for layer in range(model.cfg.n_layers):
            z = cache[f"blocks.{layer}.attn.hook_z"][0].double()  # (pos, head, d_head): sum_j A_ij v_j
            attn = model.blocks[layer].attn
            outputs = torch.stack([(z[:, h] @ attn.W_O[h].double()).norm(dim=-1).mean() for h in range(z.shape[1])])
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].double()
            mass = pattern[:, :, 0].mean(-1)
            expected = ((mass > 0.3) & (outputs / outputs.mean() < 0.1)).double()
            assert torch.equal(scores[prompt, layer], expected)


# ---------------------------------------------------------------------------------------------------------
# sink_scores: one forward pass, pattern rows a chunk at a time, equal to the definitions on full patterns


def padded_prompts(vocab: int) -> TokenDataset:
    """6 prompts of 9 tokens (two batches of PROMPTS_AT_ONCE), two of them padded, each with repeats."""
    torch.manual_seed(2)
    tokens = torch.randint(1, vocab, (6, 9))
    tokens[:, 4:8] = tokens[:, 0:4]
    mask = torch.ones_like(tokens)
    mask[1, 6:] = 0
    mask[4, 7:] = 0
    return TokenDataset(tokens.masked_fill(mask == 0, 0), mask)


def scores_from_full_patterns(model, dataset, plan_dataset=None) -> dict[str, torch.Tensor]:
    """The scores of `sink_scores` written out from each layer's full pattern at hook_pattern (the explicit
    path) and its values, in float64: o_h(i) = ||sum_j A_ij v_h(j) W_O^h||, N_ij = A_ij ||v_h(j) W_O^h||
    normalised over row i, means over each statistic's counted queries (those of `plan_dataset`'s tokens
    when given)."""
    cfg, real = model.cfg, dataset.real
    _, cache = model.run_with_cache(dataset.tokens, attention_mask=dataset.attention_mask)
    plan_tokens = dataset.tokens if plan_dataset is None else plan_dataset.tokens
    plans = make_plans(NORM_STATISTICS, Batch(plan_tokens, real, dataset.has_bos, cfg.causal))
    names = ["first_token_mass", "relative_output_norm", *(f"{s}_norm" for s in NORM_STATISTICS)]
    result = {name: torch.zeros(len(dataset), cfg.n_layers, cfg.n_heads, dtype=torch.float64) for name in names}
    n_real = real.sum(1, keepdim=True).double()
    for layer in range(cfg.n_layers):
        attn = model.blocks[layer].attn
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].double()  # (prompt, head, query, key)
        v = cache[f"blocks.{layer}.attn.hook_v"].double().repeat_interleave(attn.group_size, dim=2)
        values = torch.einsum("bkhd,hdm->bhkm", v, attn.W_O.detach().double())  # f_h(x_j)
        outputs = torch.einsum("bhqk,bhkm->bhqm", pattern, values).norm(dim=-1)  # (prompt, head, query)
        result["first_token_mass"][:, layer] = (pattern[..., 0] * real[:, None]).sum(-1) / n_real
        mean_output = (outputs * real[:, None]).sum(-1) / n_real
        result["relative_output_norm"][:, layer] = mean_output / mean_output.mean(1, keepdim=True)
        weighted = pattern * values.norm(dim=-1)[:, :, None, :]
        normalised = weighted / weighted.sum(-1, keepdim=True)
        for stat, plan in plans.items():
            for b, i, j in zip(plan.batch_idx.tolist(), plan.query_idx.tolist(), plan.key_idx.tolist()):
                result[f"{stat}_norm"][b, layer] += normalised[b, :, i, j] / int(plan.queries[b].sum())
    return result


@pytest.mark.parametrize("memory", [PATTERN_MEMORY, 1])  # 1 byte: one query row per chunk
def test_one_pass_scores_equal_the_definitions_on_full_patterns(tiny_model, memory):
    dataset = padded_prompts(tiny_model.cfg.d_vocab)
    scores = sink_scores(tiny_model, dataset, memory=memory)
    expected = scores_from_full_patterns(tiny_model, dataset)
    for name, value in expected.items():
        assert torch.allclose(scores[name], value, rtol=1e-4, atol=1e-5), (name, (scores[name] - value).abs().max())
    dormant = (expected["first_token_mass"] > 0.3) & (expected["relative_output_norm"] < 0.1)
    assert torch.equal(scores["dormant"], dormant.double())
    assert torch.equal(dormant_scores(tiny_model, dataset), scores["dormant"])  # the roles' parts, default chunks
    assert torch.allclose(norm_score("induction")(tiny_model, dataset), scores["induction_norm"], atol=1e-6)


def test_a_shuffled_control_is_scored_at_the_probe_s_positions(tiny_model):
    """With plan_dataset (the probe), the control's norm-weighted induction score counts the probe's induction
    targets on the control's patterns, as induction's null does; without it, the control's own."""
    from headscope.analysis.roles import shuffled_control

    probe_data = padded_prompts(tiny_model.cfg.d_vocab)
    control = shuffled_control(probe_data, seed=3)
    at_probe = sink_scores(tiny_model, control, plan_dataset=probe_data)
    expected = scores_from_full_patterns(tiny_model, control, plan_dataset=probe_data)
    own = scores_from_full_patterns(tiny_model, control)
    for name in ("induction_norm", "previous_token_norm", "first_token_mass"):
        assert torch.allclose(at_probe[name], expected[name], rtol=1e-4, atol=1e-5), name
    assert not torch.allclose(expected["induction_norm"], own["induction_norm"], atol=1e-3)  # the plan matters
    with pytest.raises(InputError, match="plan_dataset must have the scored prompts' shape"):
        sink_scores(tiny_model, control, plan_dataset=probe_data.subset([0, 1]))


def test_a_planted_dormant_head_is_found_by_the_one_pass(tiny_model):
    """A head whose pattern is all on the first token (hooked) and whose W_O is near zero, on every model."""
    with torch.no_grad():
        tiny_model.blocks[1].attn.W_O[2] *= 1e-3
    dataset = padded_prompts(tiny_model.cfg.d_vocab)
    with tiny_model.hooks([("blocks.1.attn.hook_pattern", onto_first_token)]):
        scores = sink_scores(tiny_model, dataset, memory=1)
        expected = scores_from_full_patterns(tiny_model, dataset)
    assert scores["dormant"][:, 1, 2].tolist() == [1.0] * len(dataset)
    assert torch.allclose(scores["first_token_mass"], expected["first_token_mass"], atol=1e-5)


def test_the_pass_keeps_the_model_on_its_fused_path(tiny_model):
    paths = []

    def which_path(z, hook):  # attached first, runs while the pass's own hooks are attached too
        paths.append(tiny_model.blocks[int(hook.name.split(".")[1])].attn.needs_pattern())

    with tiny_model.hooks([(lambda name: name.endswith("attn.hook_z"), which_path)]):
        sink_scores(tiny_model, padded_prompts(tiny_model.cfg.d_vocab))
    soft_capped = tiny_model.cfg.attn_softcap is not None  # no fused path exists: the model forms the pattern
    assert paths == [soft_capped] * (2 * tiny_model.cfg.n_layers)  # two batches


def forward_passes(model, run) -> int:
    count = []
    with model.hooks([("hook_embed", lambda x, hook: count.append(1))]):
        run()
    return len(count)


@contextlib.contextmanager
def without_roles(names):
    """The registry without the roles `names`; afterwards every role is back in its place."""
    saved = registered_roles()
    for name in names:
        unregister_role(name)
    try:
        yield
    finally:
        for role in registered_roles():
            unregister_role(role.name)
        for role in saved:
            register_role(role)


def test_classify_scores_every_sink_role_in_one_pass_per_batch():
    model = build_tiny_model("llama-gqa")
    dataset = padded_prompts(model.cfg.d_vocab)
    assert forward_passes(model, lambda: sink_scores(model, dataset)) == 2  # 6 prompts, 4 at a time

    def classify():
        return classify_heads(model, dataset, n_bootstrap=20, max_memory=2**30)

    with_all = forward_passes(model, classify)
    with without_roles(["dormant", "previous_token_norm", "attention_sink_norm", "induction_norm"]):
        without = forward_passes(model, classify)
    assert with_all - without == 2 + 2  # one pass per batch on the probe, and on the control (induction_norm's null)
    assert [r.name for r in registered_roles()][:3] == ["previous_token", "previous_token_norm", "induction"]


def test_a_norm_score_of_another_statistic_is_refused():
    with pytest.raises(InputError, match="no norm-weighted score of 'duplicate_token'"):
        norm_score("duplicate_token")
