"""Prompt pairs: the JSONL reader refuses bad lines by number; the generators make valid pairs."""

import json

import pytest
import torch

import headscope
from headscope.analysis.patching.generate import induction_records, ioi_records
from headscope.analysis.patching.pairs import from_records, read_pairs
from headscope.errors import InputError


@pytest.fixture(scope="module")
def toy():
    return headscope.load_model("toy-induction-2l")


def write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_reader_keeps_pairs_aligned_and_refuses_bad_lines_by_number(toy, tmp_path):
    good = {"clean": "t1 t2 t3", "corrupted": "t4 t5 t3", "answer": "t1", "wrong": "t9"}
    pairs = read_pairs(write(tmp_path / "ok.jsonl", [good, {**good, "clean": "t7 t8", "corrupted": "t6 t8"}]), toy.tokenizer)
    assert pairs.clean.tokens.shape == pairs.corrupted.tokens.shape == (2, 4)  # BOS + 3, the short pair padded
    assert pairs.answers.tolist() == [1, 1] and pairs.wrongs.tolist() == [9, 9]
    assert torch.equal(pairs.clean.attention_mask, pairs.corrupted.attention_mask)
    cases = [({**good, "corrupted": "t4 t5"}, "line 2: clean is 4 tokens but corrupted is 3"),
             ({**good, "answer": "t1 t2"}, "line 2: answer 't1 t2' is 2 tokens, not one"),
             ({**good, "wrong": "t1"}, "line 2: answer and wrong are the same token"),
             ({"clean": "t1"}, 'line 2 needs string fields "clean", "corrupted"')]
    for bad, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")  # a blank line 2: the bad one is line 3
        with pytest.raises(InputError, match=message.replace("line 2", "line 3")):
            read_pairs(path, toy.tokenizer)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        read_pairs(tmp_path / "empty.jsonl", toy.tokenizer)


def test_induction_pairs_on_the_toy_model_repeat_only_when_clean(toy):
    records = induction_records(toy.tokenizer, 16, seed=3, period=6)
    assert records == induction_records(toy.tokenizer, 16, seed=3, period=6)
    pairs = from_records(records, toy.tokenizer)
    clean, corrupted = pairs.clean.tokens[:, 1:], pairs.corrupted.tokens[:, 1:]  # after BOS
    assert clean.shape == (16, 11)
    assert torch.equal(clean[:, 6:], clean[:, :5]) and torch.equal(corrupted[:, 6:], clean[:, 6:])
    for row in corrupted.tolist():
        assert len(set(row)) == len(row)  # nothing repeats
    assert torch.equal(pairs.answers, clean[:, 5]) and not (pairs.wrongs[:, None] == clean).any()
    with torch.no_grad():  # the trained induction model predicts the answer on clean prompts only
        clean_logits = toy(pairs.clean.tokens)[:, -1]
        corrupted_logits = toy(pairs.corrupted.tokens)[:, -1]
    rows = torch.arange(16)
    assert (clean_logits.argmax(-1) == pairs.answers).float().mean() > 0.9
    assert (corrupted_logits[rows, pairs.answers] < clean_logits[rows, pairs.answers]).all()


def test_ioi_needs_single_token_names(toy):
    with pytest.raises(InputError, match="IOI needs three names that are single tokens; this tokenizer has 0"):
        ioi_records(toy.tokenizer, 4)


@pytest.mark.real_model
def test_ioi_pairs_for_smollm2(smollm2):
    records = ioi_records(smollm2.tokenizer, 8, seed=1)
    pairs = from_records(records, smollm2.tokenizer)
    assert [r["template"] for r in records[:2]] == ["ABBA", "BABA"]
    for r in records:
        assert r["clean"].count(r["wrong"]) == 2 and r["corrupted"].count(r["wrong"]) == 1
        assert r["clean"].count(r["answer"]) == r["corrupted"].count(r["answer"]) == 1
    assert (pairs.clean.tokens != pairs.corrupted.tokens).sum(1).eq(1).all()  # one name differs, one token
    select, evaluate = pairs.split(0.5, seed=0)
    assert sorted(select.meta["subset"] + evaluate.meta["subset"]) == list(range(8))
