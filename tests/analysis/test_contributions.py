"""Contributions checked against the model's own hooks and direct re-runs, on every tiny architecture (windows,
soft-capping, sinks and sublayer output norms included)."""

from __future__ import annotations

import pytest
import torch

from headscope.analysis.contributions import (
    attention_scores, capture_residuals, chain, decompose, decompose_layer, head_norms, mlp_scores, proximity,
    raw_token_scores, row_chunks, token_contributions, token_scores,
)
from headscope.errors import InputError

TOKENS = torch.tensor([[3, 17, 5, 42, 8, 17, 5, 60, 11, 23]])


def _cache(model, names):
    with torch.no_grad():
        _, cache = model.run_with_cache(TOKENS, names_filter=names, return_type=None)
    return cache


def test_head_terms_add_up_to_the_attention_output(tiny_model):
    n = tiny_model.cfg.n_layers
    cache = _cache(tiny_model, [f"blocks.{l}.hook_attn_out" for l in range(n)]
                   + [f"blocks.{l}.hook_resid_post" for l in range(n)])
    for dec in decompose(tiny_model, TOKENS):
        terms = dec.head_terms(range(dec.n_pos))  # (head, rows, keys, d_model)
        bias = dec.block.attn.b_O if tiny_model.cfg.attn_out_bias else 0.0
        actual = cache[f"blocks.{dec.layer}.hook_attn_out"][0]
        assert torch.allclose(terms.sum((0, 2)) + bias, actual, atol=1e-5)
        assert torch.allclose(dec.post, cache[f"blocks.{dec.layer}.hook_resid_post"][0], atol=1e-5)


def test_post_norm_terms_add_up_after_the_linearised_norm(tiny_model):
    """ALTI's decomposition of the norm: the mapped terms plus the residual sum to mid minus the norm's bias."""
    for dec in decompose(tiny_model, TOKENS):
        rows = range(dec.n_pos)
        mapped = dec.attention_norm_map(rows)
        attn_bias = dec.block.attn.b_O if tiny_model.cfg.attn_out_bias else 0.0
        residual = dec.resid + attn_bias  # the output bias is one more term of every row
        total = mapped(dec.head_terms(rows)).sum((0, 2)) + mapped(residual[:, None])[:, 0]
        norm_bias = dec.block.ln1.b if tiny_model.cfg.post_norm and hasattr(dec.block.ln1, "b") else 0.0
        assert torch.allclose(total + norm_bias, dec.mid, atol=1e-4)


@pytest.mark.parametrize("method", ["alti", "norm", "value-zeroing"])
def test_chunked_equals_unchunked(tiny_model, method):
    dec = decompose_layer(tiny_model, 1, capture_residuals(tiny_model, TOKENS)[1])
    whole = raw_token_scores(dec, method, max_memory=2**40)
    one_row = raw_token_scores(dec, method, max_memory=1)
    assert torch.allclose(whole, one_row, atol=1e-6)
    assert whole.abs().sum() > 0
    full = attention_scores(dec, range(dec.n_pos))
    for rows in row_chunks(range(dec.n_pos), 1, 3):
        part = attention_scores(dec, rows)
        assert torch.allclose(part.residual, full.residual[rows.start : rows.stop], atol=1e-6)
        keys = part.heads.shape[-1]
        assert torch.allclose(part.heads, full.heads[:, rows.start : rows.stop, :keys], atol=1e-6)
        assert (full.heads[:, rows.start : rows.stop, keys:] == 0).all()


def test_value_zeroing_equals_a_direct_rerun(tiny_model):
    layer = 1
    dec = decompose_layer(tiny_model, layer, capture_residuals(tiny_model, TOKENS)[layer])
    scores = raw_token_scores(dec, "value-zeroing", max_memory=4096)
    name = f"blocks.{layer}.hook_resid_post"
    clean = _cache(tiny_model, [name])[name][0]
    for j in (0, 4, 9):
        def zero(v, hook, j=j):
            v = v.clone()
            v[:, j] = 0.0
            return v
        with torch.no_grad(), tiny_model.hooks([(f"blocks.{layer}.attn.hook_v", zero)]):
            _, cache = tiny_model.run_with_cache(TOKENS, names_filter=[name], return_type=None)
        direct = 1 - torch.cosine_similarity(cache[name][0], clean, dim=-1)
        assert torch.allclose(scores[:, j], direct.clamp(min=0), atol=1e-5)


def test_head_norms_equal_a_direct_computation(tiny_model):
    layer = 0
    cfg = tiny_model.cfg
    output_norm = cfg.block_norms != "pre"  # a norm on attention's output: w * term / its row's RMS
    names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v"]
    names += [f"blocks.{layer}.ln1_post.hook_scale"] if output_norm else []
    tiny_model.set_attention_path(explicit=True)
    try:
        cache = _cache(tiny_model, names)
    finally:
        tiny_model.set_attention_path(explicit=False)
    pattern, v = cache[names[0]][0], cache[names[1]][0]  # (head, q, k), (pos, kv_head, d_head)
    block = tiny_model.blocks[layer]
    weight = block.ln1_post.w if output_norm else 1.0
    row_scale = cache[names[2]][0] if output_norm else torch.ones(TOKENS.shape[1], 1)  # (q, 1)
    group = cfg.n_heads // cfg.kv_heads
    expected = torch.stack([pattern[h] * (v[:, h // group] @ block.attn.W_O[h] * weight).norm(dim=-1)[None, :]
                            / row_scale for h in range(cfg.n_heads)])
    dec = decompose_layer(tiny_model, layer, capture_residuals(tiny_model, TOKENS)[layer])
    assert torch.allclose(head_norms(dec), expected, atol=1e-5)
    assert torch.allclose(head_norms(dec, max_memory=1), expected, atol=1e-5)


def test_alti_row_equals_an_explicit_construction(tiny_model):
    """Row i of ALTI: the proximity of each input's summed term (the residual added at j = i) to y_i."""
    if tiny_model.cfg.post_norm:
        pytest.skip("post-norm terms go through the linearised norm, checked separately")
    dec = decompose_layer(tiny_model, 0, capture_residuals(tiny_model, TOKENS)[0])
    i = 6
    y = dec.mid[i]
    pattern = dec.pattern(range(i, i + 1))[:, 0]  # (head, keys)
    expected = []
    weight, scale = 1.0, 1.0
    if tiny_model.cfg.block_norms != "pre":  # the heads' terms pass the norm on attention's output
        weight, name = tiny_model.blocks[0].ln1_post.w, "blocks.0.ln1_post.hook_scale"
        scale = _cache(tiny_model, [name])[name][0, i]
    for j in range(pattern.shape[-1]):
        term = sum(pattern[h, j] * dec.values[h, j] for h in range(dec.values.shape[0])) * weight / scale
        term = term + (dec.resid[i] if j == i else 0)
        expected.append(max(0.0, float(y.abs().sum() - (y - term).abs().sum())))
    got = raw_token_scores(dec, "alti")[i]
    assert torch.allclose(got[: len(expected)], torch.tensor(expected), atol=1e-5)
    if tiny_model.cfg.causal:
        assert (got[len(expected):] == 0).all()


@pytest.mark.parametrize("method", ["alti", "norm", "value-zeroing"])
def test_scores_are_normalised_and_causal(tiny_model, method):
    matrices = token_contributions(tiny_model, TOKENS, method)
    assert matrices.shape == (tiny_model.cfg.n_layers, 10, 10)
    sums = matrices.sum(-1)
    # A row where no term brings the output closer (random biases can dominate a tiny model) stays 0.
    assert torch.allclose(sums, (sums > 0.5).float(), atol=1e-5)
    assert (sums > 0.5).float().mean() > 0.5
    if tiny_model.cfg.causal:
        assert (matrices.triu(1) == 0).all()


def test_chain_keeps_rows_normalised(tiny_model):
    rolled = chain(token_contributions(tiny_model, TOKENS, "norm"))
    assert torch.allclose(rolled.sum(-1), torch.ones(10, dtype=torch.float64), atol=1e-5)


def test_sublayer_scores_sum_to_one(tiny_model):
    dec = decompose_layer(tiny_model, 1, capture_residuals(tiny_model, TOKENS)[1])
    rows = range(2, 7)
    scores = attention_scores(dec, rows)
    total = scores.heads.sum((0, 2)) + scores.residual + (0 if scores.mlp is None else scores.mlp)
    assert torch.allclose(total, torch.ones(len(rows)), atol=1e-5)
    if tiny_model.cfg.d_mlp and not tiny_model.cfg.parallel_attn_mlp:
        mlp = mlp_scores(dec, rows)
        assert torch.allclose(mlp.residual + mlp.mlp, torch.ones(len(rows)), atol=1e-5)
    else:
        with pytest.raises(InputError, match="no separate MLP"):
            mlp_scores(dec, rows)


def test_proximity_by_hand():
    total = torch.tensor([[1.0, -2.0]])
    terms = torch.tensor([[[1.0, 0.0], [0.0, -2.0], [-3.0, 0.0]]])
    assert proximity(total, terms).tolist() == [[1.0, 2.0, 0.0]]  # 3-2, 3-1, max(0, 3-6)


def test_row_chunks_and_bad_input(tiny_model):
    assert row_chunks([0, 1, 2, 5, 6], per_row_bytes=10, max_memory=20) == [range(0, 2), range(2, 3), range(5, 7)]
    dec = decompose_layer(tiny_model, 0, capture_residuals(tiny_model, TOKENS)[0])
    with pytest.raises(InputError, match="unknown contribution method"):
        token_scores(dec, "attention")
    with pytest.raises(InputError, match="layer 5"):
        decompose_layer(tiny_model, 5, dec.resid)
    with pytest.raises(InputError, match="batch of 2"):
        capture_residuals(tiny_model, TOKENS.repeat(2, 1))


def test_captured_mlp_outputs_give_the_same_decomposition(tiny_model):
    """decompose() reuses the forward pass's MLP outputs; decompose_layer alone recomputes them."""
    residuals = capture_residuals(tiny_model, TOKENS)
    for dec in decompose(tiny_model, TOKENS):
        alone = decompose_layer(tiny_model, dec.layer, residuals[dec.layer])
        assert torch.allclose(dec.post, alone.post, atol=1e-5) and torch.allclose(dec.mid, alone.mid, atol=1e-5)
        assert (dec.mlp_out is None) == (alone.mlp_out is None)
        if dec.mlp_out is not None:
            assert torch.allclose(dec.mlp_out, alone.mlp_out, atol=1e-5)
