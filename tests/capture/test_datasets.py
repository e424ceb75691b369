"""Datasets: seeded and reproducible, the right structure, texts tokenized as the model's tokenizer does,
clear errors for bad input, and pair lists equal to brute force and to TransformerLens' detection patterns."""

import json

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers, processors, trainers

from headscope.capture.datasets import from_file, from_tensor, from_texts, load_dataset, repeated_random_tokens
from headscope.errors import InputError
from headscope.model.tokenizer import Tokenizer

SENTENCES = ["the cat sat on the mat", "a dog ran after the cat", "the mat was red and the dog was brown",
             "cats and dogs sat together on a mat"]


@pytest.fixture
def bpe_tokenizer() -> Tokenizer:
    """A byte-level BPE trained here on a few sentences, with BOS/EOS/PAD like a decoder's."""
    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(SENTENCES * 3, trainer)
    ids = {name: backend.token_to_id(name) for name in ("<bos>", "<eos>", "<pad>")}
    return Tokenizer(backend, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"])


@pytest.fixture
def bert_tokenizer() -> Tokenizer:
    """A word-level encoder tokenizer whose post-processor adds [CLS] ... [SEP], as BERT's does."""
    words = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
    backend = RustTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return Tokenizer(backend, pad_token_id=0, uses_post_processor=True)


# Repeated random tokens


def test_repeated_random_tokens_are_seeded():
    make = lambda seed: repeated_random_tokens(4, period=10, repeats=3, vocab_size=50, seed=seed, bos_token_id=1)
    assert torch.equal(make(7).tokens, make(7).tokens)
    assert not torch.equal(make(7).tokens, make(8).tokens)


def test_repeated_random_tokens_are_the_same_on_every_machine():
    # Pinned values: a change in torch's CPU generator or in how we draw would change every result.
    dataset = repeated_random_tokens(1, period=6, vocab_size=20, seed=0)
    assert dataset.tokens.tolist() == [[4, 5, 13, 19, 7, 14, 4, 5, 13, 19, 7, 14]]


def test_repeated_random_tokens_structure():
    dataset = repeated_random_tokens(5, period=10, repeats=3, vocab_size=30, seed=1, bos_token_id=0,
                                     exclude_ids=[0, 1, 2, 7], low=0)
    assert dataset.tokens.shape == (5, 31) and dataset.has_bos and dataset.attention_mask is None
    assert (dataset.tokens[:, 0] == 0).all()
    body = dataset.tokens[:, 1:]
    assert torch.equal(body[:, :10], body[:, 10:20]) and torch.equal(body[:, :10], body[:, 20:])
    assert all(len(set(row[:10].tolist())) == 10 for row in body)  # no repeats inside a period
    assert not torch.isin(body, torch.tensor([0, 1, 2, 7])).any()
    assert dataset.meta == {"n_prompts": 5, "seed": 1, "period": 10, "repeats": 3, "vocab_size": 30, "low": 0,
                            "bos_token_id": 0, "exclude_ids": [0, 1, 2, 7], "without_replacement": True}
    assert len(dataset) == 5 and dataset.name == "repeated-random"


def test_repeated_random_tokens_low_and_a_period_longer_than_the_vocabulary():
    dataset = repeated_random_tokens(3, period=8, vocab_size=10, seed=0, low=5)
    assert dataset.tokens.min() >= 5 and dataset.tokens.max() < 10
    assert dataset.meta["without_replacement"] is False  # 8 draws from 5 ids must repeat, and meta says so
    assert not dataset.has_bos


def test_repeated_random_tokens_reject_bad_shapes():
    with pytest.raises(InputError, match="induction needs at least two periods"):
        repeated_random_tokens(2, period=5, repeats=1)
    with pytest.raises(InputError, match="need at least one prompt and a period"):
        repeated_random_tokens(0, period=5)
    with pytest.raises(InputError, match="need at least one prompt and a period"):
        repeated_random_tokens(2, period=0)
    with pytest.raises(InputError, match="token ids start at 0"):
        repeated_random_tokens(2, period=3, low=-1)
    with pytest.raises(InputError, match="no token ids left"):
        repeated_random_tokens(2, period=3, vocab_size=3, exclude_ids=[0, 1, 2])


# Texts


def test_padded_texts_equal_the_tokenizer(bpe_tokenizer):
    dataset = from_texts(SENTENCES, bpe_tokenizer)
    rows = [bpe_tokenizer.encode(text) for text in SENTENCES]
    assert dataset.has_bos and dataset.name == "texts" and rows[0][0] == bpe_tokenizer.bos_token_id
    assert dataset.tokens.shape == (4, max(map(len, rows)))
    for n, row in enumerate(rows):
        assert dataset.tokens[n, : len(row)].tolist() == row
        assert dataset.attention_mask[n].tolist() == [1] * len(row) + [0] * (dataset.tokens.shape[1] - len(row))
        assert (dataset.tokens[n, len(row):] == bpe_tokenizer.pad_token_id).all()
    assert dataset.meta["n_truncated"] == 0 and dataset.meta["skipped_blank"] == []


def test_padded_texts_cut_to_seq_len_content_tokens(bpe_tokenizer):
    dataset = from_texts(SENTENCES + ["a"], bpe_tokenizer, seq_len=5)
    assert dataset.tokens.shape == (5, 6)  # BOS + 5 content tokens
    assert dataset.tokens[0].tolist() == bpe_tokenizer.encode(SENTENCES[0])[:6]
    assert dataset.meta["n_truncated"] == 4 and dataset.attention_mask[4].sum() == 2


def test_blank_texts_are_skipped_and_recorded(bpe_tokenizer):
    dataset = from_texts(["the cat", "  ", "a dog"], bpe_tokenizer, prepend_bos=False)
    assert len(dataset) == 2 and not dataset.has_bos and dataset.meta["skipped_blank"] == [1]
    assert dataset.tokens[0, : len(bpe_tokenizer.encode("the cat", False))].tolist() == \
        bpe_tokenizer.encode("the cat", False)


def test_packed_texts(bpe_tokenizer):
    dataset = from_texts(SENTENCES, bpe_tokenizer, mode="pack", seq_len=8)
    stream = []
    for n, text in enumerate(SENTENCES):
        stream += ([bpe_tokenizer.eos_token_id] if n else []) + bpe_tokenizer.encode(text, prepend_bos=False)
    n_windows = len(stream) // 8
    assert dataset.tokens.shape == (n_windows, 9) and dataset.attention_mask is None and dataset.has_bos
    assert (dataset.tokens[:, 0] == bpe_tokenizer.bos_token_id).all()
    assert dataset.tokens[:, 1:].flatten().tolist() == stream[: n_windows * 8]
    assert dataset.meta["n_dropped_tokens"] == len(stream) - n_windows * 8
    assert dataset.meta["n_tokens"] == len(stream) and dataset.meta["mode"] == "pack"


def test_encoder_texts_keep_cls_and_sep(bert_tokenizer):
    padded = from_texts(["the cat sat", "a dog ran on the mat"], bert_tokenizer)
    assert padded.has_bos
    assert padded.tokens[0, :5].tolist() == bert_tokenizer.encode("the cat sat") == [1, 4, 5, 6, 2]
    assert padded.tokens[1].tolist() == bert_tokenizer.encode("a dog ran on the mat")
    cut = from_texts(["a dog ran on the mat"], bert_tokenizer, seq_len=3)
    assert cut.tokens.tolist() == [[1, 9, 10, 11, 2]] and cut.meta["n_truncated"] == 1  # [SEP] survives the cut
    packed = from_texts(["the cat sat", "a dog ran on the mat"], bert_tokenizer, mode="pack", seq_len=4)
    assert packed.tokens.tolist() == [[1, 4, 5, 6, 9, 2], [1, 10, 11, 7, 4, 2]]
    assert packed.meta["n_dropped_tokens"] == 1


def test_bad_texts_are_clear_errors(bpe_tokenizer):
    with pytest.raises(InputError, match="a model with no tokenizer was given text"):
        from_texts(["the cat"], None)
    with pytest.raises(InputError, match="the dataset is empty"):
        from_texts([], bpe_tokenizer)
    with pytest.raises(InputError, match="the dataset is empty"):
        from_texts(["", " \n"], bpe_tokenizer)
    with pytest.raises(InputError, match="not one string"):
        from_texts("the cat", bpe_tokenizer)
    with pytest.raises(InputError, match="unknown dataset mode 'stream'"):
        from_texts(["the cat"], bpe_tokenizer, mode="stream")
    with pytest.raises(InputError, match="pack mode .* give seq_len"):
        from_texts(["the cat"], bpe_tokenizer, mode="pack")
    with pytest.raises(InputError, match="fewer than one window of seq_len=100"):
        from_texts(["the cat"], bpe_tokenizer, mode="pack", seq_len=100)
    with pytest.raises(InputError, match="seq_len must be at least 1"):
        from_texts(["the cat"], bpe_tokenizer, seq_len=0)


# Files


def test_txt_and_jsonl_files(bpe_tokenizer, tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_bytes("\ufeffthe cat sat\r\n\r\na dog ran\n".encode())  # BOM, CRLF and a blank line
    dataset = from_file(txt, bpe_tokenizer)
    assert len(dataset) == 2 and dataset.name == "file:prompts.txt" and dataset.meta["path"] == str(txt)
    assert dataset.tokens[0, :4].tolist() == bpe_tokenizer.encode("the cat sat")[:4]
    assert len(dataset.meta["sha256"]) == 64
    packed = from_file(txt, bpe_tokenizer, mode="pack", seq_len=4)
    assert packed.tokens[:, 1:].flatten().tolist() == \
        bpe_tokenizer.encode("the cat sat\r\n\r\na dog ran\n", prepend_bos=False)[: 4 * len(packed)]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(json.dumps({"text": "the mat", "id": 1}) + "\n\n" + json.dumps({"text": "a cat"}) + "\n")
    dataset = from_file(jsonl, bpe_tokenizer)
    assert dataset.tokens[1, : len(bpe_tokenizer.encode("a cat"))].tolist() == bpe_tokenizer.encode("a cat")


def test_bad_files_are_clear_errors(bpe_tokenizer, tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "binary.txt").write_bytes(b"the cat \xff\xfe")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"\n')
    (tmp_path / "notext.jsonl").write_text('{"txt": "x"}\n')
    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "data.csv").write_text("a,b\n")
    cases = {"missing.txt": "missing.txt does not exist", "empty.txt": "empty.txt is empty",
             "binary.txt": "binary.txt is not UTF-8", "bad.jsonl": "bad.jsonl line 2 is not JSON",
             "notext.jsonl": 'notext.jsonl line 1 has no "text"', "folder.txt": "folder.txt is a directory",
             "data.csv": "data.csv is neither .txt"}
    for name, message in cases.items():
        with pytest.raises(InputError, match=message):
            from_file(tmp_path / name, bpe_tokenizer)
    (tmp_path / "good.txt").write_text("the cat\n")
    with pytest.raises(InputError, match="no tokenizer was given text"):
        from_file(tmp_path / "good.txt", None)


# Tensors, the dataset object, and the dispatcher


def test_from_tensor_validates():
    tokens = torch.tensor([[5, 6, 7], [8, 9, 0]], dtype=torch.int32)
    dataset = from_tensor(tokens, torch.tensor([[1, 1, 1], [1, 1, 0]]), has_bos=True)
    assert dataset.tokens.dtype == torch.long and dataset.has_bos and dataset.attention_mask[1].tolist() == [1, 1, 0]
    assert from_tensor(tokens, torch.ones(2, 3)).attention_mask is None  # nothing padded
    bad = [
        ((torch.zeros(3, dtype=torch.long),), "2-D integer tensor"),
        ((torch.zeros(2, 3),), "2-D integer tensor"),
        ((torch.tensor([[1, -2]]),), "non-negative, found -2"),
        ((torch.zeros(0, 4, dtype=torch.long),), "the dataset is empty"),
        ((tokens, torch.ones(3, 2)), "attention_mask shape"),
        ((tokens, torch.tensor([[1, 0, 1], [1, 1, 1]])), "right-padded"),
        ((tokens, torch.tensor([[0, 0, 0], [1, 1, 1]])), "at least one real token"),
        ((tokens, torch.full((2, 3), 2)), "only 0"),
    ]
    for args, message in bad:
        with pytest.raises(InputError, match=message):
            from_tensor(*args)


def test_batches_and_subsets():
    tokens = torch.arange(20).view(5, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]])
    dataset = from_tensor(tokens, mask)
    parts = list(dataset.batches(2))
    assert [rows for rows, _, _ in parts] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert torch.equal(torch.cat([t for _, t, _ in parts]), tokens)
    assert torch.equal(torch.cat([m for _, _, m in parts]), mask)
    picked = dataset.subset([4, 0])
    assert picked.tokens.tolist() == [[16, 17], [0, 1]] and picked.attention_mask is None  # padding dropped
    assert picked.meta["subset"] == [4, 0]
    with pytest.raises(InputError, match="prompt 5 does not exist"):
        dataset.subset([5])
    with pytest.raises(InputError, match="batch_size must be at least 1"):
        next(dataset.batches(0))


def test_load_dataset_dispatches(bpe_tokenizer, tmp_path):
    common = dict(seq_len=16, num_prompts=3, vocab_size=50, bos_token_id=0, exclude_ids=[0])
    default = load_dataset("repeated-random", bpe_tokenizer, **common)
    assert default.tokens.shape == (3, 17) and default.meta["period"] == 8
    explicit = load_dataset("repeated-random:period=4:repeats=3", bpe_tokenizer, seed=2, **common)
    assert explicit.meta["period"] == 4 and explicit.meta["repeats"] == 3 and explicit.meta["seed"] == 2
    assert torch.equal(explicit.tokens, repeated_random_tokens(3, 4, 3, 50, 2, 0, [0]).tokens)
    txt = tmp_path / "prompts.txt"
    txt.write_text("\n".join(SENTENCES))
    first_two = load_dataset(str(txt), bpe_tokenizer, seq_len=16, num_prompts=2)
    assert len(first_two) == 2 and first_two.name == "file:prompts.txt"
    assert len(load_dataset(str(txt), bpe_tokenizer, num_prompts=None)) == 4
    with pytest.raises(InputError, match="unknown dataset 'wikipedia': use repeated-random, .* .txt or .jsonl"):
        load_dataset("wikipedia", bpe_tokenizer, **common)
    for spec in ("repeated-random:period=x", "repeated-random:offset=3", "repeated-random:period=2:period=3"):
        with pytest.raises(InputError, match="bad dataset option"):
            load_dataset(spec, bpe_tokenizer, **common)
    with pytest.raises(InputError, match="induction needs at least two periods"):
        load_dataset("repeated-random:repeats=1", bpe_tokenizer, **common)
    with pytest.raises(InputError, match="needs seq_len"):
        load_dataset("repeated-random", bpe_tokenizer, num_prompts=1, vocab_size=50)
    with pytest.raises(InputError, match="missing.jsonl does not exist"):
        load_dataset(str(tmp_path / "missing.jsonl"), bpe_tokenizer, **common)


@pytest.mark.real_model
def test_an_encoders_random_prompts_sit_in_its_cls_sep_frame(minilm):
    from headscope.capture.datasets import dataset_for_model

    dataset = dataset_for_model(minilm, "repeated-random", seq_len=8, num_prompts=2)
    cls, sep = minilm.tokenizer.backend.token_to_id("[CLS]"), minilm.tokenizer.backend.token_to_id("[SEP]")
    assert dataset.has_bos and (dataset.tokens[:, 0] == cls).all() and (dataset.tokens[:, -1] == sep).all()
    assert torch.equal(dataset.tokens[:, 1:5], dataset.tokens[:, 5:9])
