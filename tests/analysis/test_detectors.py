"""copying_scores: each head's direct logit effect on the token its induction target holds, checked on
hand-made prompts whose copy queries are listed in the test and whose effects are computed by hand (the
norms' scales recomputed from the residual stream, one query at a time)."""

import math

import pytest
import torch

from headscope.analysis.detectors import copying_scores
from headscope.capture.datasets import from_tensor
from headscope.distributed import DistributedError
from headscope.errors import InputError
from tests.conftest import build_tiny_model

BOS, PAD = 1, 11
# Prompt 0: 5 6 | 7 | 5 6 | 8 | 5 6 | 8 ... Prompt 1: 9 10 9 10 9 11 9, then padding (id 11, masked).
TOKENS = torch.tensor([[BOS, 5, 6, 7, 5, 6, 8, 5, 6, 8, BOS, 5],
                       [BOS, 9, 10, 9, 10, 9, 11, 9, PAD, PAD, PAD, PAD]])
MASK = torch.tensor([[1] * 12, [1] * 8 + [0] * 4])
# (prompt, query i, copied token), worked out by hand:
#   prompt 0: i=4 (5, earlier 5 at 1 followed by 6, and 6 follows i) -> 6; i=5 (6 follows 7 earlier, 8 now): no;
#   i=7 (5 at 1 and at 4, both followed by 6: ONE query) -> 6; i=8 (6 at 5 followed by 8, as now) -> 8;
#   i=9 (8 at 6 followed by 5, BOS now): no; i=10 (BOS: position 0 is not an occurrence) no; i=11: last position.
#   prompt 1: i=3 -> 10; i=4 -> 9; i=5 (9 earlier followed by 10, 11 now): no;
#   i=7 (9 at 5 followed by 11, and the next column holds 11 -- but it is padding): no.
COPY_QUERIES = [(0, 4, 6), (0, 7, 6), (0, 8, 8), (1, 3, 10), (1, 4, 9)]
HEADS = [(0, 0), (0, 3), (1, 2)]


def _model(arch: str):
    """A tiny seeded model with weights of standard deviation 0.2 (not 0.02), so the effects are of order one
    and a query counted wrongly moves a score far beyond the tolerance."""
    model = build_tiny_model(arch)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("W_"):
                param.mul_(10)
    return model


def _rms(x: torch.Tensor, eps: float) -> float:
    return math.sqrt(float((x * x).mean()) + eps)


@torch.no_grad()
def _by_hand(model, layer: int, head: int) -> float:
    """The mean over COPY_QUERIES of the head's output, through the output norm (sandwich) and the final norm
    with their scales as the run had them (recomputed here from the stream), onto W_U[:, t] - mean W_U."""
    cfg = model.cfg
    names = [f"blocks.{layer}.attn.hook_result", f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    _, cache = model.run_with_cache(TOKENS, names_filter=names, attention_mask=MASK)
    W_U = model.W_U.float()
    total = 0.0
    for b, i, t in COPY_QUERIES:
        result = cache[names[0]][b, i]  # (head, d_model)
        x = result[head].clone()
        if cfg.block_norms != "pre":  # the norm on attention's output saw every head's sum (+ b_O)
            raw = result.sum(0) + (model.blocks[layer].attn.b_O if cfg.attn_out_bias else 0)
            x = x / _rms(raw, cfg.norm_eps) * model.blocks[layer].ln1_post.w
        if cfg.final_norm:
            stream = cache[names[1]][b, i].clone()
            if cfg.norm == "layernorm":
                stream, x = stream - stream.mean(), x - x.mean()
            x = x / _rms(stream, cfg.norm_eps) * model.ln_final.w
        direction = W_U[:, t] - W_U.mean(1)
        total += float(x @ direction)
    return total / len(COPY_QUERIES)


@pytest.mark.parametrize("arch", ["attn-only", "gpt2", "llama-gqa", "neox", "gemma", "olmo2"])
def test_copying_score_is_the_mean_direct_logit_effect_over_the_copy_queries(arch):
    model = _model(arch)
    dataset = from_tensor(TOKENS, MASK, has_bos=True)
    scores = copying_scores(model, dataset, HEADS)
    assert list(scores) == HEADS
    for layer, head in HEADS:
        expected = _by_hand(model, layer, head)
        assert scores[(layer, head)] == pytest.approx(expected, rel=1e-4)
    assert len({round(v, 6) for v in scores.values()}) == len(HEADS)  # the heads are told apart
    # One prompt at a time: the same mean over the same five queries.
    assert copying_scores(model, dataset, HEADS, batch_size=1) == pytest.approx(scores, rel=1e-5)


@torch.no_grad()
def test_without_bos_position_zero_is_an_occurrence_like_any_other():
    """has_bos=False: i=10 (token 1, at 0 followed by 5, and 5 follows i) is a copy query too."""
    model = _model("attn-only")
    scores = copying_scores(model, from_tensor(TOKENS, MASK, has_bos=False), [(1, 1)])
    _, cache = model.run_with_cache(TOKENS, names_filter=["blocks.1.attn.hook_result"], attention_mask=MASK)
    W_U = model.W_U
    effects = [float(cache["blocks.1.attn.hook_result"][b, i, 1] @ (W_U[:, t] - W_U.mean(1)))
               for b, i, t in COPY_QUERIES + [(0, 10, 5)]]
    assert scores[(1, 1)] == pytest.approx(sum(effects) / 6, rel=1e-4)


@torch.no_grad()
def test_a_batch_of_more_prompts_than_positions_counts_every_query_once():
    """Six copies of BOS 5 5 5 5 in one batch: the copy queries are positions 2 and 3 of every prompt (5 follows
    the earlier 5s), twelve queries; each query is counted once however many prompts the batch holds."""
    model = _model("llama-gqa")
    tokens = torch.tensor([[BOS, 5, 5, 5, 5]] * 6)
    scores = copying_scores(model, from_tensor(tokens, has_bos=True), [(1, 0)])
    _, cache = model.run_with_cache(tokens[:1], names_filter=["blocks.1.attn.hook_result", "blocks.1.hook_resid_post"])
    W_U, effects = model.W_U, []
    for i in (2, 3):
        x, stream = cache["blocks.1.attn.hook_result"][0, i, 0], cache["blocks.1.hook_resid_post"][0, i]
        x = x / _rms(stream, model.cfg.norm_eps) * model.ln_final.w
        effects.append(float(x @ (W_U[:, 5] - W_U.mean(1))))
    assert scores[(1, 0)] == pytest.approx(sum(effects) / 2, rel=1e-4) and abs(effects[0] - effects[1]) > 1e-3


def test_refusals_name_the_problem():
    model = build_tiny_model("attn-only")
    dataset = from_tensor(TOKENS, MASK, has_bos=True)
    for head, name in [((2, 0), "L2H0"), ((0, 4), "L0H4"), ((-1, 0), "L-1H0"), ((0, -1), "L0H-1")]:
        with pytest.raises(InputError, match=f"^head {name} does not exist in a model of 2 layers x 4 heads$"):
            copying_scores(model, dataset, [(0, 0), head])
    assert set(copying_scores(model, dataset, [(0, 0), (1, 3)])) == {(0, 0), (1, 3)}  # the corners exist
    no_repeat = from_tensor(torch.tensor([[BOS, 5, 6, 7, 8, 5, 9]]), has_bos=True)  # 5 repeats, its bigram not
    with pytest.raises(InputError, match=r"^no query in this dataset repeats an earlier bigram: copying needs repeated "
                                         r"tokens \(e\.g\. the repeated-random dataset\)$"):
        copying_scores(model, no_repeat, [(0, 0)])
    with pytest.raises(InputError, match=r"^copying scores need an unembedding; this model \(an encoder\) has none$"):
        copying_scores(build_tiny_model("bert"), dataset, [(0, 0)])
    with pytest.raises(DistributedError, match="^distributed=True needs an initialised process group"):
        copying_scores(model, dataset, [(0, 0)], distributed=True)  # asked for, and no group: refused, not ignored
