"""Copy suppression: a planted head recovered through classify, a head that reaches the same positions by
offset rejected by the shuffled null, the attention half against a slow per-query count, the logit lens
against the model's own output, and random weights holding none."""

from __future__ import annotations

import pytest
import torch

from headscope.analysis import classify_heads, shuffled_control
from headscope.analysis.copy_suppression import (
    THRESHOLD, copy_suppression_masses, copy_suppression_scores, logit_lens_top1, negative_heads,
)
from headscope.analysis.ov_scores import ov_copying_scores
from headscope.capture.datasets import repeated_random_tokens
from headscope.model.config import ModelConfig
from headscope.model.transformer import HookedTransformer
from tests.conftest import build_tiny_model

VOCAB, PERIOD = 32, 6
SUPPRESSOR, BY_OFFSET, COPIER, ELSEWHERE = range(4)


def planted_model() -> HookedTransformer:
    """One attention-only layer, no norms, tied embeddings whose rows are orthonormal: the logit lens at the
    layer's input (the embedding) predicts the current token itself. SUPPRESSOR, BY_OFFSET and ELSEWHERE have
    OV = -E^T E (every eigenvalue of the full circuit <= 0: copying score -1), COPIER +E^T E (+1)."""
    cfg = ModelConfig(architecture="attn-only", d_model=64, n_layers=1, n_heads=4, d_head=32, d_vocab=VOCAB,
                      n_ctx=32, norm="none", final_norm=False, positional="rotary", tie_embeddings=True)
    torch.manual_seed(0)
    model = HookedTransformer(cfg).eval()
    E = torch.linalg.qr(torch.randn(64, 64))[0][:, :VOCAB].T  # (vocab, d_model), orthonormal rows
    with torch.no_grad():
        model.embed.W_E.copy_(E)
        attn = model.blocks[0].attn
        for head, sign in ((SUPPRESSOR, -1), (BY_OFFSET, -1), (COPIER, 1), (ELSEWHERE, -1)):
            attn.W_V[head], attn.W_O[head] = E.T, sign * E
    return model


def last_copy(row: list[int], i: int) -> int | None:
    earlier = [j for j in range(i) if row[j] == row[i]]
    return earlier[-1] if earlier else None


def forced_target(head: int, i: int, row: list[int]) -> int:
    """SUPPRESSOR and COPIER: the last earlier copy of the current token (the logit lens' prediction), else
    itself; BY_OFFSET: PERIOD back, whatever stands there; ELSEWHERE: the previous token."""
    if head in (SUPPRESSOR, COPIER):
        j = last_copy(row, i)
        return i if j is None else j
    if head == BY_OFFSET:
        return i - PERIOD if i >= PERIOD else i
    return max(i - 1, 0)


def forced_patterns(model):
    running = {}

    def read_tokens(embed, hook):
        running["tokens"] = (embed @ model.embed.W_E.T).argmax(-1).tolist()  # orthonormal rows name their token

    def force(pattern, hook):
        pattern = torch.zeros_like(pattern)
        for b, row in enumerate(running["tokens"]):
            for head in range(pattern.shape[1]):
                for i in range(len(row)):
                    pattern[b, head, i, forced_target(head, i, row)] = 1.0
        return pattern

    return [("hook_embed", read_tokens), ("blocks.0.attn.hook_pattern", force)]


def slow_mass(head: int, probe_row: list[int], scored_row: list[int]) -> float:
    """The attention half written out: the probe's counted queries (the current token, which the logit lens
    predicts, stands earlier) and the share of them whose forced key on `scored_row` is such a copy."""
    counted = [i for i in range(len(probe_row)) if last_copy(probe_row, i) is not None]
    hits = [probe_row[forced_target(head, i, scored_row)] == probe_row[i] and forced_target(head, i, scored_row) < i
            for i in counted]
    return sum(hits) / len(counted)


def test_the_planted_suppressor_holds_the_role_and_the_offset_head_is_refused_by_the_null():
    model = planted_model()
    assert negative_heads(model)[0].tolist() == [True, True, False, True]
    probe = repeated_random_tokens(6, PERIOD, 2, vocab_size=VOCAB, seed=0)
    control = shuffled_control(probe, 0)
    with model.hooks(forced_patterns(model)):
        table = classify_heads(model, probe, n_bootstrap=200, roles=["copy_suppression", "negative_copying"])
    rows = probe.tokens.tolist()
    for head in range(4):
        row = table.head(0, head)
        gate = head != COPIER
        expected = sum(slow_mass(head, r, r) for r in rows) / len(rows) * gate
        null = sum(slow_mass(head, p, c) for p, c in zip(rows, control.tokens.tolist())) / len(rows) * gate
        assert row.scores["copy_suppression"] == pytest.approx(expected, abs=1e-6), row.name
        assert row.nulls["copy_suppression"] == pytest.approx(null, abs=1e-6), row.name
    assert table.head(0, SUPPRESSOR).scores["copy_suppression"] == pytest.approx(1.0)
    assert [h.name for h in table.with_role("copy_suppression")] == [f"L0H{SUPPRESSOR}"]
    offset = table.head(0, BY_OFFSET)  # 1.0 on the probe and on the control: the null decides
    assert offset.scores["copy_suppression"] == pytest.approx(1.0) and offset.nulls["copy_suppression"] == pytest.approx(1.0)
    assert "not above null" in offset.rejected["copy_suppression"]
    assert table.head(0, COPIER).scores["copy_suppression"] == 0.0  # attends to copies, but its OV copies
    assert table.head(0, ELSEWHERE).scores["copy_suppression"] < THRESHOLD  # suppresses, but looks elsewhere
    assert {h.name for h in table.with_role("negative_copying")} == {"L0H0", "L0H1", "L0H3"}
    assert "the same score on the shuffled control" in table.head(0, SUPPRESSOR).reasons["copy_suppression"]


def test_the_logit_lens_of_the_last_layer_is_the_models_prediction():
    model = build_tiny_model("llama-gqa")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    kept = {}
    with model.hooks([(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", lambda x, hook: kept.update(x=x))]):
        logits = model(tokens)
    assert torch.equal(logit_lens_top1(model, kept["x"]), logits.argmax(-1))


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "neox"])
def test_random_models_have_no_copy_suppression_heads(name):
    model = build_tiny_model(name)
    dataset = repeated_random_tokens(4, 8, vocab_size=model.cfg.d_vocab, seed=1)
    scores = torch.as_tensor(copy_suppression_scores(model, dataset))
    assert (scores < THRESHOLD).all()
    # the attention half alone, on every layer: random heads do not single out the predicted token's copies
    masses = copy_suppression_masses(model, dataset, range(model.cfg.n_layers)).nan_to_num(0.0).mean(0)
    assert (masses < THRESHOLD).all() and ov_copying_scores(model).shape == masses.shape
    table = classify_heads(model, dataset, n_bootstrap=20, roles=["copy_suppression"])
    assert not table.with_role("copy_suppression")
