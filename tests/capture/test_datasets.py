"""Datasets: seeded and reproducible, the right structure, clear errors; pair lists equal brute force."""

import json

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers

from headscope.capture.datasets import (
    earlier_occurrence_pairs, from_file, from_tensor, from_texts, induction_target_pairs, load_dataset,
    repeated_random_tokens,
)
from headscope.errors import InputError
from headscope.model.tokenizer import Tokenizer


@pytest.fixture
def word_tokenizer() -> Tokenizer:
    words = ["<bos>", "<eos>", "<pad>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "[UNK]"]
    backend = RustTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return Tokenizer(backend, bos_token_id=0, eos_token_id=1, pad_token_id=2)


def test_repeated_random_tokens_are_seeded_and_repeat():
    a = repeated_random_tokens(4, period=10, repeats=3, vocab_size=50, seed=7, bos_token_id=1, exclude_ids=[0, 1, 2])
    b = repeated_random_tokens(4, period=10, repeats=3, vocab_size=50, seed=7, bos_token_id=1, exclude_ids=[0, 1, 2])
    c = repeated_random_tokens(4, period=10, repeats=3, vocab_size=50, seed=8, bos_token_id=1, exclude_ids=[0, 1, 2])
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (4, 31) and a.has_bos and (a.tokens[:, 0] == 1).all()
    body = a.tokens[:, 1:]
    assert torch.equal(body[:, :10], body[:, 10:20]) and torch.equal(body[:, :10], body[:, 20:])
    assert all(len(set(row[:10].tolist())) == 10 for row in body)  # no repeats inside a period
    assert not torch.isin(body, torch.tensor([0, 1, 2])).any()
    assert a.meta["seed"] == 7 and a.meta["period"] == 10


def test_repeated_random_tokens_reject_bad_shapes():
    with pytest.raises(InputError, match="induction needs at least two periods"):
        repeated_random_tokens(2, period=5, repeats=1)
    with pytest.raises(InputError, match="need at least one prompt"):
        repeated_random_tokens(0, period=5)


def test_texts_padded_and_packed(word_tokenizer):
    padded = from_texts(["the cat sat", "a dog ran on the mat"], word_tokenizer)
    assert padded.has_bos and padded.tokens.shape == (2, 7)
    assert padded.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert padded.tokens[0, :4].tolist() == [0, 3, 4, 5]
    cut = from_texts(["the cat sat", "a dog ran on the mat"], word_tokenizer, seq_len=3)
    assert cut.tokens.shape == (2, 3) and cut.meta["n_truncated"] == 2
    packed = from_texts(["the cat sat", "a dog ran on the mat"], word_tokenizer, mode="pack", seq_len=4)
    # stream: the cat sat <eos> a dog ran on the mat <eos> = 11 tokens -> 3 windows of 3 after BOS
    assert packed.tokens.tolist() == [[0, 3, 4, 5], [0, 1, 8, 9], [0, 10, 6, 3]]
    assert packed.meta["n_dropped"] == 2 and packed.attention_mask is None


def test_text_files(word_tokenizer, tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("the cat sat\n\na dog ran\n")
    assert len(from_file(txt, word_tokenizer)) == 2
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"text": "the mat"}) + "\n" + json.dumps({"text": "a cat"}) + "\n")
    assert from_file(jsonl, word_tokenizer).tokens[:, 1].tolist() == [3, 8]
    spec = load_dataset(str(txt), word_tokenizer, seq_len=8, num_prompts=1, vocab_size=12)
    assert len(spec) == 1 and spec.name == "file:prompts.txt"


def test_bad_dataset_inputs_are_clear_errors(word_tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match="empty.txt is empty"):
        from_file(empty, word_tokenizer)
    with pytest.raises(InputError, match="does not exist"):
        from_file(tmp_path / "missing.txt", word_tokenizer)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="is not UTF-8"):
        from_file(binary, word_tokenizer)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"txt": "x"}\n')
    with pytest.raises(InputError, match='line 1 has no "text"'):
        from_file(bad_json, word_tokenizer)
    with pytest.raises(InputError, match="no tokenizer was given text"):
        from_texts(["the cat"], None)
    with pytest.raises(InputError, match="unknown dataset 'wikipedia'"):
        load_dataset("wikipedia", word_tokenizer, seq_len=8, num_prompts=1, vocab_size=12)
    with pytest.raises(InputError, match="bad dataset option"):
        load_dataset("repeated-random:period=x", word_tokenizer, seq_len=8, num_prompts=1, vocab_size=12)
    with pytest.raises(InputError, match="2-D integer tensor"):
        from_tensor(torch.zeros(3))


def brute_force_pairs(tokens, real):
    batch, n_pos = tokens.shape
    return {(b, i, j) for b in range(batch) for i in range(n_pos) for j in range(i)
            if real[b, i] and real[b, j] and tokens[b, i] == tokens[b, j]}


def test_pair_lists_equal_brute_force():
    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        n_pos = int(torch.randint(1, 40, (1,), generator=generator))
        tokens = torch.randint(0, 6, (3, n_pos), generator=generator)
        real = torch.ones(3, n_pos, dtype=torch.bool)
        real[2, n_pos // 3:] = False
        found = set(zip(*(t.tolist() for t in earlier_occurrence_pairs(tokens, real))))
        assert found == brute_force_pairs(tokens, real), trial
        shifted = set(zip(*(t.tolist() for t in induction_target_pairs(tokens, real))))
        assert shifted == {(b, i, j + 1) for b, i, j in found}


def test_repeated_random_pairs_point_one_period_back():
    dataset = repeated_random_tokens(2, period=8, repeats=2, vocab_size=100, seed=0, bos_token_id=0, exclude_ids=[0])
    b, i, j = induction_target_pairs(dataset.tokens, torch.ones_like(dataset.tokens, dtype=torch.bool))
    assert len(i) == 2 * 8 and torch.equal(i - j, torch.full_like(i, 8 - 1))
