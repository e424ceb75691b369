"""The circuit roles (copying, negative_copying, successor, name_mover) as built-in roles: planted heads
recovered through classify, an IOI word model whose planted name mover scores 1 and whose other heads 0,
random weights holding none, and the roles left out where a model cannot be scored."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from headscope.analysis import classify_heads
from headscope.analysis.circuit_roles import (
    NAME_MOVER_THRESHOLD, has_ioi_names, has_ordinal_items, io_attention, io_copy_hits, ioi_prompts,
    name_mover_scores,
)
from headscope.analysis.ov_scores import ov_copying_scores
from headscope.analysis.patching.pairs import IOI_NAMES, IOI_TEMPLATES
from headscope.capture.datasets import repeated_random_tokens
from headscope.model.config import ModelConfig
from headscope.model.tokenizer import Tokenizer
from headscope.model.transformer import HookedTransformer
from tests.analysis.test_ov_scores import COPY, SUPPRESS, planted_model
from tests.conftest import build_tiny_model

MOVER, ELSEWHERE, NO_COPY = range(3)  # heads of the IOI word model: head 3 is left random


def test_planted_copying_and_negative_heads_get_their_roles_through_classify():
    model = planted_model()  # no tokenizer: successor and name_mover do not apply and are left out
    table = classify_heads(model, repeated_random_tokens(4, 6, vocab_size=99, seed=0), n_bootstrap=20)
    assert {"copying", "negative_copying"} <= set(table.roles)
    assert not {"successor", "name_mover"} & set(table.roles)
    scores = ov_copying_scores(model)[0]
    assert [h.scores["copying"] for h in table.heads] == scores.tolist()
    assert [h.scores["negative_copying"] for h in table.heads] == (-scores).tolist()
    assert [h.name for h in table.with_role("copying")] == [f"L0H{COPY}"]
    assert [h.name for h in table.with_role("negative_copying")] == [f"L0H{SUPPRESS}"]
    assert table.head(0, COPY).reasons["copying"] == "copying 1.00 >= threshold 0.90 (no null)"


def test_encoders_get_none_of_the_circuit_roles():
    table = classify_heads(build_tiny_model("bert"), seq_len=12, num_prompts=4, n_bootstrap=20)
    assert not {"copying", "negative_copying", "successor", "name_mover"} & set(table.roles)


def ioi_word_model(planted: bool = True) -> HookedTransformer:
    """An attention-only model whose word-level tokenizer knows the IOI templates' words and names. Planted:
    the names embed as orthonormal vectors, heads MOVER, ELSEWHERE and NO_COPY have OV = the projection onto
    them: each name maps to itself (MOVER, ELSEWHERE) or to the next name (NO_COPY); tied unembedding."""
    words = sorted({w for t in IOI_TEMPLATES for w in t.replace("{", " {").replace("}", "} ").split()
                    if "{" not in w and w.isalpha()} | {",", "."})
    vocab = ["[UNK]", *words, *IOI_NAMES]
    backend = RustTokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    cfg = ModelConfig(architecture="attn-only", d_model=64, n_layers=1, n_heads=4, d_head=48, d_vocab=len(vocab),
                      n_ctx=32, norm="none", final_norm=False, positional="rotary", tie_embeddings=True)
    torch.manual_seed(0)
    model = HookedTransformer(cfg, Tokenizer(backend)).eval()
    if planted:
        names = [vocab.index(n) for n in IOI_NAMES]
        e = torch.linalg.qr(torch.randn(64, 64))[0][:, :len(names)]  # (d_model, names), orthonormal
        with torch.no_grad():
            model.embed.W_E.copy_(torch.randn(len(vocab), 64) / 64)  # other words: small, random
            model.embed.W_E[names] = e.T
            attn = model.blocks[0].attn
            for head in (MOVER, ELSEWHERE):
                attn.W_V[head] = torch.cat([e, torch.zeros(64, 48 - len(names))], 1)  # every name, padded
                attn.W_O[head] = torch.cat([e.T, torch.zeros(48 - len(names), 64)], 0)
            attn.W_V[NO_COPY] = attn.W_V[MOVER]  # reads the name, writes the next one: never copies
            attn.W_O[NO_COPY] = torch.cat([e.roll(-1, 1).T, torch.zeros(48 - len(names), 64)], 0)
    return model


def forced_pattern(io_position: int):
    """Hooks making the final query of MOVER and NO_COPY attend only to `io_position`, of ELSEWHERE to 0."""
    def force(pattern, hook):
        pattern = pattern.clone()
        for head, key in ((MOVER, io_position), (NO_COPY, io_position), (ELSEWHERE, 0)):
            pattern[:, head, -1] = 0.0
            pattern[:, head, -1, key] = 1.0
        return pattern
    return [("blocks.0.attn.hook_pattern", force)]


def test_the_planted_name_mover_scores_one_and_the_others_zero():
    model = ioi_word_model()
    assert has_ioi_names(model) and not has_ordinal_items(model)
    prompts = ioi_prompts(model, 8)
    for p in prompts:  # the IO name is where the prompt says, once, and the last token is "to"
        assert model.tokenizer.decode([p.tokens[p.io_position]]).strip() in IOI_NAMES
        assert model.tokenizer.decode([p.tokens[-1]]).strip() == "to"
    hits = io_copy_hits(model, [p.io_id for p in prompts])
    assert hits[:, 0, MOVER].all() and hits[:, 0, ELSEWHERE].all() and not hits[:, 0, NO_COPY].any()
    per_prompt = []
    for p in prompts:
        with model.hooks(forced_pattern(p.io_position)):
            assert io_attention(model, [p])[0, 0, MOVER] == pytest.approx(1.0)
            per_prompt.append(name_mover_scores(model, [p]))
    scores = torch.stack(per_prompt).mean(0)[0]
    assert scores[MOVER] == pytest.approx(1.0)
    assert scores[ELSEWHERE] == pytest.approx(0.0, abs=1e-6)  # copies, but attends to position 0
    assert scores[NO_COPY] == pytest.approx(0.0, abs=1e-6)  # attends to IO, but its OV does not copy


def test_a_random_model_with_names_has_no_name_movers_and_a_name_free_one_no_role():
    model = ioi_word_model(planted=False)
    scores = name_mover_scores(model, ioi_prompts(model))  # the 16 prompts classify uses
    assert scores.shape == (1, 4) and (scores < NAME_MOVER_THRESHOLD).all()
    table = classify_heads(model, seq_len=12, num_prompts=4, n_bootstrap=20)
    assert "name_mover" in table.roles and not table.with_role("name_mover")
    assert [h.scores["name_mover"] for h in table.heads] == pytest.approx(scores[0].tolist())
    assert not has_ioi_names(build_tiny_model("gpt2"))  # no tokenizer
