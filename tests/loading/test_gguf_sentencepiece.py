"""SentencePiece GGUF vocabularies (`tokenizer.ggml.model = llama`) of Gemma 2, Gemma 3 and Phi-3: tiny files
laid out as llama.cpp's converters write them (special tokens, the 256 `<0xNN>` byte tokens, "▁" pieces with
scores, no merges; Gemma with `add_space_prefix = false` and space runs stored as real spaces, Phi-3 padded
with `[PADn]` tokens) are tokenized by our loader exactly as transformers' GGUF tokenizer does.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import gguf
import pytest
import transformers
from gguf import TokenType
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers, trainers

from headscope.errors import ModelFormatError, UnsupportedModelError
from headscope.loading.gguf import load_gguf
from headscope.loading.load import load_model
from tests.loading.test_gguf_families import _build, write_gguf

SPACE = "\u2581"
CORPUS = ["the cat sat on the mat", "attention heads attend to the previous token", "def f(x):\n    return x + 1",
          "numbers 123 456 and spaces   here", "Hello world, hello heads.\n\nNew paragraph"] * 3
BYTES = [f"<0x{byte:02X}>" for byte in range(256)]
# Strings the vocabulary covers only partly: leading, trailing and repeated spaces, newlines and tabs, digits,
# characters outside it that fall back to bytes (accents, CJK, emoji, a snowman no corpus line holds), and
# words cut differently when merges are ranked by score or by position ("hellonumbers", "attention").
TEXTS = ["Hello world", "  leading spaces", "trailing spaces   ", "a   b    c  d", "the\ncat\n\n\tsat\r\nx",
         "numbers 12345 and 3.14159", "café naïve 日本語 😀 Ελληνικά", "unknown ☃ here", " ", "x",
         "\n",
         "the cat sat on the mat", "attention hellonumbers matattention"]
SPECIAL_TEXTS = {
    "gemma": ["<start_of_turn>user\nHi the cat<end_of_turn>\n<start_of_turn>model\n", "<bos>the<eos> cat"],
    "phi3": ["<|user|>\nthe cat<|end|>\n<|assistant|> heads", "<s>the</s> cat<|endoftext|>"],
}


def _pieces() -> list[str]:
    """SentencePiece-style pieces ("▁" for spaces, one per word start) of a BPE trained on CORPUS, in merge order."""
    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=160, show_progress=False))
    vocab = backend.get_vocab()
    return sorted(vocab, key=vocab.get) + [SPACE * 2, SPACE * 4]


def _gemma_vocabulary(writer: gguf.GGUFWriter, size: int) -> None:
    """Gemma's layout; scores shuffled, because transformers ranks Gemma's merges by file position."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    pieces = [" " * len(p) if set(p) == {SPACE} and len(p) > 1 else p for p in _pieces()]
    tokens = specials + BYTES + pieces
    types = ([TokenType.CONTROL] * 3 + [TokenType.UNKNOWN] + [TokenType.CONTROL] * 3 + [TokenType.BYTE] * 256
             + [TokenType.USER_DEFINED if not p.strip() else TokenType.NORMAL for p in pieces])
    scores = [0.0] * (len(specials) + 256) + random.Random(0).sample([-float(i) for i in range(len(pieces))],
                                                                     len(pieces))
    _write(writer, tokens + [f"<unused{i}>" for i in range(size - len(tokens))], scores, types, ids=(2, 1, 3, 0))
    writer.add_add_space_prefix(False)
    writer.add_add_bos_token(True)


def _phi3_vocabulary(writer: gguf.GGUFWriter, size: int) -> None:
    """Llama 2's layout plus Phi-3's chat tokens; pieces in shuffled order, ranked by their scores."""
    pieces = _pieces()
    order = random.Random(0).sample(range(len(pieces)), len(pieces))
    chat = ["<|endoftext|>", "<|assistant|>", "<|user|>", "<|end|>"]
    tokens = ["<unk>", "<s>", "</s>"] + BYTES + [pieces[i] for i in order] + chat
    types = ([TokenType.UNKNOWN] + [TokenType.CONTROL] * 2 + [TokenType.BYTE] * 256
             + [TokenType.NORMAL] * len(pieces) + [TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.USER_DEFINED,
                                                   TokenType.CONTROL])
    scores = [0.0] * 259 + [-float(i) for i in order] + [0.0] * len(chat)
    padding = size - len(tokens)
    eos = len(tokens) - len(chat)
    _write(writer, tokens + [f"[PAD{len(tokens) + i}]" for i in range(padding)], scores + [-10000.0] * padding,
           types + [TokenType.UNUSED] * padding, ids=(1, eos, 0, eos))


def _write(writer: gguf.GGUFWriter, tokens: list[str], scores: list[float], types: list[int],
           ids: tuple[int, int, int, int]) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores + [0.0] * (len(tokens) - len(scores)))
    writer.add_token_types([int(t) for t in types] + [int(TokenType.CONTROL)] * (len(tokens) - len(types)))
    bos, eos, unk, pad = ids
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(unk)
    writer.add_pad_token_id(pad)


VOCABULARIES = {"gemma": _gemma_vocabulary, "phi3": _phi3_vocabulary}
SIZE = 512  # the model's embedding rows: room for every token above


def _write_model(case: str, folder: Path) -> Path:
    model = _build(case)
    model.resize_token_embeddings(SIZE)
    model.config.pad_token_id = None  # the vocabulary writes its own padding id
    vocabulary = VOCABULARIES[case[:5]]
    return write_gguf(model, case, folder / f"{case}.gguf", vocabulary=partial(vocabulary, size=SIZE))


@pytest.fixture(scope="module", params=["gemma2", "gemma3", "phi3"])
def tokenizers_pair(request, tmp_path_factory):
    path = _write_model(request.param, tmp_path_factory.mktemp(request.param))
    reference = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return request.param, load_gguf(path).tokenizer, reference


def test_ids_equal_transformers(tokenizers_pair):
    case, ours, reference = tokenizers_pair
    for text in TEXTS + SPECIAL_TEXTS[case[:5]]:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        assert ours.encode(text, prepend_bos=False) == expected, text
        assert ours.decode(expected) == reference.decode(expected), text


def test_decode_round_trips(tokenizers_pair):
    _, ours, _ = tokenizers_pair
    for text in TEXTS:
        assert ours.decode(ours.encode(text)[1:]) == text


def test_pieces_bytes_and_specials(tokenizers_pair):
    """The vocabulary is used as llama.cpp does: whole pieces, "▁" for spaces, bytes for unknown characters,
    special tokens matched whole, BOS prepended by default."""
    case, ours, _ = tokenizers_pair
    backend, gemma = ours.backend, case.startswith("gemma")
    pieces = [backend.id_to_token(i) for i in ours.encode("the cat", prepend_bos=False)]
    assert "".join(pieces) == ("" if gemma else SPACE) + f"the{SPACE}cat"  # Gemma's files add no prefix space
    assert pieces[-1] == f"{SPACE}cat"
    snowman = [backend.id_to_token(i) for i in ours.encode("☃", prepend_bos=False)]
    assert snowman[-3:] == ["<0xE2>", "<0x98>", "<0x83>"]
    assert ours.encode("x")[0] == ours.bos_token_id == backend.token_to_id("<bos>" if gemma else "<s>")
    turn = "<start_of_turn>" if gemma else "<|end|>"
    assert ours.encode(turn, prepend_bos=False) == [backend.token_to_id(turn)]
    assert backend.token_to_id(turn) in ours.special_ids


def test_gemma_space_runs_are_pieces(tmp_path: Path):
    """Gemma stores runs of spaces with real spaces; they are found for runs in the text."""
    ours = load_gguf(_write_model("gemma2", tmp_path)).tokenizer
    pieces = [ours.backend.id_to_token(i) for i in ours.encode("a    b", prepend_bos=False)]
    assert pieces == ["a", SPACE * 4, "b"]


def test_load_model_gets_the_tokenizer(tmp_path: Path):
    loaded = load_model(_write_model("phi3", tmp_path))
    assert loaded.tokenizer.decode(loaded.to_tokens("the cat sat")[0, 1:]) == "the cat sat"


@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_other_tokenizer_models_are_refused(kind, tmp_path: Path):
    model = _build("phi3")

    def vocabulary(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(kind)
        writer.add_token_list(["<unk>", "a"])

    path = write_gguf(model, "phi3", tmp_path / "other.gguf", vocabulary=vocabulary)
    with pytest.raises(UnsupportedModelError, match=f"GGUF tokenizer '{kind}' is not supported") as error:
        load_gguf(path)
    assert "\n" not in str(error.value)


def test_scores_are_required_outside_gemma(tmp_path: Path):
    def vocabulary(writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(["<unk>", "<s>", "</s>", f"{SPACE}a"])

    path = write_gguf(_build("phi3"), "phi3", tmp_path / "no-scores.gguf", vocabulary=vocabulary)
    with pytest.raises(ModelFormatError, match="4 tokens needs as many tokenizer.ggml.scores, found no"):
        load_gguf(path)
