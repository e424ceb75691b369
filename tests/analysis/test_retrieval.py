"""Retrieval heads: a planted copying head found exactly, random models without one, the copy-step rows
equal to the full pattern's, the needle prompts as the docstring states them, and the role via classify."""

import dataclasses
import json

import pytest
import torch

from headscope.analysis import classify_heads
from headscope.analysis.ov_scores import HeadScores
from headscope.analysis.retrieval import (RETRIEVAL_ROLE, THRESHOLD, model_needle_prompts, needle_prompts,
                                          retrieval_hits, retrieval_scores)
from headscope.analysis.role_registry import register_role, unregister_role
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS, build_tiny_model

VOCAB = 64
COPIER = (0, 1)  # the planted head: attends to the token after the last earlier occurrence of its own


def copier_target(row: list[int], i: int) -> int:
    earlier = [j for j in range(i) if row[j] == row[i]]
    return earlier[-1] + 1 if earlier else 0


def planted_hooks():
    """Keys are one-hot positions; the copier's query points at its target, every other head's is zero
    (uniform attention, whose argmax is the first key, never a needle token)."""
    tokens = {}

    def read_tokens(embed, hook):
        tokens["rows"] = embed.argmax(-1).tolist()  # W_E is the identity

    def set_q(q, hook):
        q = torch.zeros_like(q)
        if hook.name.startswith(f"blocks.{COPIER[0]}."):
            for b, row in enumerate(tokens["rows"]):
                for i in range(q.shape[1]):
                    q[b, i, COPIER[1], copier_target(row, i)] = 100.0
        return q

    def set_k(k, hook):
        return torch.eye(k.shape[1], k.shape[-1])[None, :, None, :].expand_as(k).clone()

    return [("hook_embed", read_tokens), (lambda n: n.endswith("attn.hook_q"), set_q),
            (lambda n: n.endswith("attn.hook_k"), set_k)]


@pytest.fixture(scope="module")
def planted_model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY_CONFIGS["attn-only"], d_head=64, d_model=VOCAB, d_vocab=VOCAB)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        model.embed.W_E.copy_(torch.eye(VOCAB))
    return model


def test_the_planted_copier_scores_one_and_the_others_zero(planted_model):
    with planted_model.hooks(planted_hooks()):
        result = retrieval_scores(planted_model, n_prompts=6, context_len=48, needle_len=6, seed=3)
    expected = torch.zeros(2, 4, dtype=torch.float64)
    expected[COPIER] = 1.0
    assert torch.equal(result.scores, expected)
    assert result.top(1) == [("L0H1", 1.0)]


def test_random_models_have_no_retrieval_head():
    for name in ("gpt2", "llama-gqa", "gemma", "sinks", "neox", "olmo2", "attn-only"):
        result = retrieval_scores(build_tiny_model(name), n_prompts=8, context_len=64, needle_len=5)
        assert float(result.scores.max()) < THRESHOLD, name


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "gemma", "sinks"])
def test_copy_step_rows_equal_the_full_patterns(name):
    """The O(n) rows against an independent statement: argmax of the explicit path's whole n x n pattern."""
    model = build_tiny_model(name)
    prompts = needle_prompts(3, 40, 4, model.cfg.d_vocab, seed=1, bos_token_id=0)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    expected = torch.zeros(3, model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)
    for p, tokens in enumerate(prompts.tokens):
        _, cache = model.run_with_cache(tokens[None], names_filter=names)
        for layer, hook in enumerate(names):
            pattern = cache[hook][0]  # (head, query, key)
            for query, target in zip(prompts.copy_queries().tolist(), prompts.targets()[p].tolist()):
                top = pattern[:, query].argmax(-1)
                expected[p, layer] += (top == target).double() / prompts.needle_len
    got = retrieval_hits(model, prompts)
    assert torch.allclose(got, expected)
    assert got.sum() > 0  # something to compare: some head hits the needle by chance


def test_needle_prompts_are_the_stated_construction():
    prompts = needle_prompts(5, 50, 4, 40, seed=2, bos_token_id=39, exclude_ids=[0])
    assert prompts.tokens.shape == (5, 50)
    for row, start in zip(prompts.tokens.tolist(), prompts.needle_start.tolist()):
        needle = row[start:start + 5]
        assert row[0] == 39 and len(set(needle)) == 5
        assert row[-4:] == needle[:4]  # the tail repeats the cue and the tokens to copy but the last
        haystack = row[1:start] + row[start + 5:-4]
        assert not set(haystack) & set(needle) and not {0, 39} & set(row[1:])
    assert len(set(prompts.needle_start.tolist())) > 1  # the depth varies
    again = needle_prompts(5, 50, 4, 40, seed=2, bos_token_id=39, exclude_ids=[0])
    assert torch.equal(again.tokens, prompts.tokens)


def test_the_result_round_trips_through_json(planted_model):
    result = retrieval_scores(planted_model, n_prompts=2, context_len=40, needle_len=3)
    data = json.loads(result.to_json())
    assert data["method"] == "retrieval" and data["results"][0]["heads"] == ["L0H0"]
    assert data["meta"]["threshold"] == 0.1 and data["meta"]["context_len"] == 40
    assert torch.equal(HeadScores.from_json(result.to_json()).scores, result.scores)


def test_registered_on_demand_the_role_flows_through_classify(planted_model):
    register_role(RETRIEVAL_ROLE)
    try:
        with planted_model.hooks(planted_hooks()):
            table = classify_heads(planted_model, seq_len=20, num_prompts=4, n_bootstrap=50)
    finally:
        unregister_role("retrieval")
    head = next(h for h in table.heads if (h.layer, h.head) == COPIER)
    assert "retrieval" in head.roles and head.scores["retrieval"] == 1.0
    assert all("retrieval" not in h.roles for h in table.heads if (h.layer, h.head) != COPIER)
    assert "retrieval" in json.loads(table.to_json())["meta"]["role_definitions"]


def test_bad_requests_are_one_line_errors(planted_model):
    with pytest.raises(InputError, match="no haystack"):
        needle_prompts(1, 10, 5, 100)
    with pytest.raises(InputError, match="longer than the model's context"):
        model_needle_prompts(planted_model, 1, 1000, 4, 0)
    with pytest.raises(InputError, match="bidirectional"):
        retrieval_scores(build_tiny_model("bert"), context_len=40)


@pytest.mark.real_model
def test_smollm2_has_retrieval_heads_where_its_induction_heads_are(smollm2):
    """experiments/head_roles/retrieval.md: at 1024 tokens L17H3 and L18H6 copy nearly every needle token;
    a short context of 256 tokens finds them too, and most heads never point at the needle."""
    result = retrieval_scores(smollm2, n_prompts=2, context_len=256, needle_len=8)
    top = dict(result.top(4))
    assert {"L17H3", "L18H6"} <= set(top) and min(top.values()) >= 0.5
    assert int((result.scores >= THRESHOLD).sum()) < 0.1 * result.scores.numel()
