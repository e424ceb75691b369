"""OV copying and succession scores: planted heads recovered exactly, the cyclic eigenvalue shortcut against
the full |S| x |S| circuit built by hand, effective embeddings against a real forward pass, random weights
near chance, and SmolLM2 once."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from headscope.analysis.ov_scores import (
    HeadScores, effective_embeddings, folded_unembedding, ordinal_sequences, ov_circuit, ov_copying,
    ov_copying_scores, ov_eigenvalues, successor_scores,
)
from headscope.errors import InputError
from headscope.model.config import ModelConfig
from headscope.model.tokenizer import Tokenizer
from headscope.model.transformer import HookedTransformer
from tests.conftest import build_tiny_model

ORDINAL = list(range(10, 18))  # the planted ordinal vocabulary: token 10 -> 11 -> ... -> 17
COPY, SUPPRESS, SUCCESSOR, RANDOM = range(4)  # the heads of the planted model


def planted_model() -> HookedTransformer:
    """One attention-only layer, no norms, tied embeddings. The ordinal tokens embed as orthonormal vectors
    e_0..e_7; head 0's OV is the projection onto them (each token maps to itself: copying), head 1 its
    negative, head 2 maps e_i to e_{i+1} (a successor head), head 3 is random."""
    cfg = ModelConfig(architecture="attn-only", d_model=32, n_layers=1, n_heads=4, d_head=8, d_vocab=99, n_ctx=16,
                      norm="none", final_norm=False, positional="rotary", tie_embeddings=True)
    torch.manual_seed(0)
    model = HookedTransformer(cfg).eval()
    basis, _ = torch.linalg.qr(torch.randn(32, 32))  # orthonormal columns
    e = basis[:, :8]  # (d_model, 8): e_i is the embedding of token ORDINAL[i]
    with torch.no_grad():
        model.embed.W_E.copy_(torch.randn(99, 32) / 32**0.5)
        model.embed.W_E[ORDINAL] = e.T
        attn = model.blocks[0].attn
        attn.W_V[COPY], attn.W_O[COPY] = e, e.T
        attn.W_V[SUPPRESS], attn.W_O[SUPPRESS] = e, -e.T
        attn.W_V[SUCCESSOR] = torch.cat([e[:, :7], torch.zeros(32, 1)], 1)  # e_i -> unit i (i < 7)
        attn.W_O[SUCCESSOR] = torch.cat([e[:, 1:].T, torch.zeros(1, 32)], 0)  # unit i -> e_{i+1}
        attn.W_V[RANDOM], attn.W_O[RANDOM] = torch.randn(32, 8), torch.randn(8, 32)
    return model


def test_planted_copying_and_suppression_heads_score_plus_and_minus_one():
    # E Q Q^T E^T is positive semi-definite: every eigenvalue >= 0, so the score is exactly +1; its negative -1.
    scores = ov_copying_scores(planted_model())
    assert scores.shape == (1, 4)
    assert scores[0, COPY] == pytest.approx(1.0, abs=1e-9)
    assert scores[0, SUPPRESS] == pytest.approx(-1.0, abs=1e-9)
    assert abs(float(scores[0, RANDOM])) < 0.9


def test_planted_successor_head_scores_one_and_the_copying_head_zero():
    # Through head 2, token i's logits over the ordinal tokens are e_{i+1} . e_j = [j == i + 1]: top-1 is the
    # successor for all 7 pairs. Through head 0 they are [j == i]: never the successor.
    result = successor_scores(planted_model(), {"planted": ORDINAL})
    assert result.scores[0, SUCCESSOR] == 1.0
    assert result.scores[0, COPY] == 0.0
    assert result.meta["pairs"] == 7 and result.meta["chance"] == pytest.approx(1 / 8)
    assert result.by_task["planted"][0, SUCCESSOR] == 1.0
    assert result.top(1) == [("L0H2", 1.0)]


def _direct_circuit(model: HookedTransformer, layer: int, head: int, ids: list[int]) -> torch.Tensor:
    """The full |S| x |S| OV circuit written out with every norm weight as an explicit matrix."""
    cfg = model.cfg
    D = cfg.d_model
    eye = torch.eye(D, dtype=torch.float64)
    centre = eye - 1.0 / D if cfg.norm == "layernorm" else eye  # LayerNorm subtracts the mean
    block, attn = model.blocks[layer], model.blocks[layer].attn
    scale = 1.0 if cfg.embed_scale is None else float(torch.tensor(cfg.embed_scale, dtype=torch.float32))
    E = model.embed.W_E[ids].double() * scale
    V = attn.W_V[head // (cfg.n_heads // cfg.kv_heads)].double()  # the query head's key/value head
    if cfg.norm != "none" and cfg.block_norms != "output" and not cfg.post_norm:
        V = centre @ torch.diag(block.ln1.w.double()) @ V
    O = attn.W_O[head].double()
    if cfg.block_norms != "pre":
        O = O @ torch.diag(block.ln1_post.w.double())
    U = model.W_U[:, ids].double()
    if cfg.final_norm and cfg.norm != "none":
        U = centre @ torch.diag(model.ln_final.w.double()) @ U
    return (E @ V @ O @ U).detach()


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "gemma", "olmo2", "neox", "attn-only"])
def test_cyclic_eigenvalues_match_the_full_circuit(name):
    model = build_tiny_model(name)
    ids = list(range(5, 45))  # |S| = 40 > d_head = 8: the full circuit has 32 (numerically) zero eigenvalues
    small = ov_eigenvalues(model, ids)
    scores = ov_copying_scores(model, ids)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            full = torch.linalg.eigvals(_direct_circuit(model, layer, head, ids))
            largest = full[full.abs().argsort(descending=True)[:8]]
            ours = small[layer, head]
            for value in ours:  # the same multiset of non-zero eigenvalues
                assert (largest - value).abs().min() < 1e-8 * max(1.0, float(value.abs()))
            direct = float(full.sum().real / full.abs().sum())
            assert float(scores[layer, head]) == pytest.approx(direct, abs=1e-8)


def test_ov_circuit_is_what_layer_zero_heads_write_on_one_token():
    # On a one-token input a head attends to that token alone, so its output (hook_result) is
    # RMSNorm(x) W_V[kv] W_O[h]; through the folded unembedding that is the circuit's row for x, divided by
    # the RMS of x (a positive factor the circuit leaves out). Grouped-query heads read their kv head's W_V.
    model = build_tiny_model("llama-gqa")
    ids = [3, 17, 42, 98]
    _, cache = model.run_with_cache(torch.tensor(ids)[:, None], names_filter=["blocks.0.attn.hook_result"],
                                    return_type=None)
    written = cache["blocks.0.attn.hook_result"][:, 0].double()  # (tokens, head, d_model)
    x = model.embed.W_E[ids].double()
    inverse_rms = (x.pow(2).mean(-1) + model.cfg.norm_eps).rsqrt()  # (tokens,)
    expected = torch.einsum("thd,dv->htv", written, folded_unembedding(model, ids).detach())
    torch.testing.assert_close(ov_circuit(model, 0, ids) * inverse_rms[None, :, None], expected,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["llama-gqa", "gemma", "olmo2"])
def test_effective_embeddings_are_block_zero_without_its_attention(name):
    # With layer 0's attention silenced (and no learned positions), the residual stream after block 0 on a
    # one-token input is exactly the token embedding plus its MLP0 output.
    model = build_tiny_model(name)
    with torch.no_grad():
        model.blocks[0].attn.W_O.zero_()
    ids = [3, 17, 42, 98]
    _, cache = model.run_with_cache(torch.tensor(ids)[:, None], names_filter=["blocks.0.hook_resid_post"],
                                    return_type=None)
    expected = cache["blocks.0.hook_resid_post"][:, 0].double()
    torch.testing.assert_close(effective_embeddings(model, ids), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "gemma"])
def test_random_weights_are_neither_copying_nor_successor_heads(name):
    model = build_tiny_model(name)
    copying = ov_copying_scores(model)
    assert copying.abs().max() < 0.6  # a random 8 x 8 circuit has eigenvalues of both signs
    sequences = {"a": list(range(20, 32)), "b": list(range(40, 47)), "c": list(range(60, 72))}
    result = successor_scores(model, sequences)
    chance = result.meta["chance"]
    assert abs(float(result.scores.mean()) - chance) < 0.1
    assert result.scores.max() < 0.5


def _word_model() -> HookedTransformer:
    words = ["[UNK]", "Monday", "Tuesday", "Wednesday", "Friday", "Saturday", "one", "two"]
    backend = RustTokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    cfg = ModelConfig(architecture="attn-only", d_model=16, n_layers=1, n_heads=2, d_head=8, d_vocab=len(words),
                      n_ctx=8, norm="none", final_norm=False, positional="rotary")
    return HookedTransformer(cfg, Tokenizer(backend))


def test_word_sequences_keep_single_known_tokens_and_neighbouring_pairs():
    model = _word_model()
    chosen = ordinal_sequences(model, {"days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                                "Saturday"],
                                       "numbers": ["one", "three"]})  # no neighbours survive: left out
    days = chosen["days"]
    assert days.labels == ("Monday", "Tuesday", "Wednesday", "Friday", "Saturday")  # Thursday is [UNK]
    assert days.ids == (1, 2, 3, 4, 5)
    assert days.pairs == ((0, 1), (1, 2), (3, 4))  # Wednesday -> Friday is not a succession
    assert list(chosen) == ["days"]
    with pytest.raises(InputError, match="no ordinal sequence"):
        ordinal_sequences(model, {"numbers": ["one", "three"]})


def test_bad_inputs_are_refused():
    model = planted_model()
    with pytest.raises(InputError, match="out of range"):
        ov_copying_scores(model, [1, 200])
    with pytest.raises(InputError, match="repeats"):
        successor_scores(model, {"x": [1, 2, 1]})
    with pytest.raises(InputError, match="no tokenizer"):
        successor_scores(model)
    with pytest.raises(InputError, match="encoder"):
        ov_copying_scores(build_tiny_model("bert"))


def test_results_round_trip_through_json():
    model = planted_model()
    result = successor_scores(model, {"planted": ORDINAL, "short": [30, 31, 32]})
    data = json.loads(result.to_json())
    assert data["method"] == "succession" and data["results"][SUCCESSOR]["heads"] == ["L0H2"]
    assert data["results"][SUCCESSOR]["by_task"]["planted"] == 1.0
    back = HeadScores.from_json(result.to_json())
    torch.testing.assert_close(back.scores, result.scores)
    torch.testing.assert_close(back.by_task["short"], result.by_task["short"])
    copying = ov_copying(model)
    assert json.loads(copying.to_json())["meta"]["tokens"] == list(range(99))
    assert "L0H0" in copying._repr_html_() and "Tensor(1, 4)" in repr(copying)


@pytest.mark.real_model
def test_smollm2_scores(smollm2):
    copying = ov_copying_scores(smollm2)
    assert copying.shape == (30, 9) and copying.abs().max() <= 1.0
    assert copying.max() > 0.9 and copying.min() < -0.9  # both copying and copy-suppressing heads exist
    result = successor_scores(smollm2)
    used = result.meta["sequences"]
    assert used["days"]["labels"][0] == "Monday" and used["days"]["form"] == "leading space"
    assert used["numbers"]["labels"] == [str(i) for i in range(1, 10)]  # digits are single tokens bare only
    assert result.meta["pairs"] == 8 + 25 + 6 + 11
