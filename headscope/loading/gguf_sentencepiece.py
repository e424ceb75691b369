"""SentencePiece-style GGUF vocabularies (`tokenizer.ggml.model == "llama"`: Gemma 2/3, Phi-3, Llama 2) as a
`tokenizers` BPE model.

Such a file holds tokens, scores and token types but no merges. llama.cpp's SPM tokenizer
(`llm_tokenizer_spm` in llama-vocab.cpp) replaces spaces with "▁", prepends one to each run of plain text
when `tokenizer.ggml.add_space_prefix` says so (its default for this vocabulary type: yes; Gemma's
converters write no), then repeatedly merges the adjacent pair whose joined piece is in the vocabulary with
the best priority, and spells whatever is left outside the vocabulary as `<0xNN>` byte tokens. That is
byte-fallback BPE with one merge for every way a piece splits into two pieces, ranked by the joined
piece's priority, which is how transformers rebuilds these files (integrations/gguf/gguf_tokenizer_mapping.py,
`generate_merges` in tokenization_utils_base.py), and we follow it so the ids agree:

- the priority is the piece's score, except for Gemma, whose scores do not follow its merge order: there
  it is the piece's position in the file (earlier first);
- Gemma files store pieces made only of spaces with real spaces, which normalized text never contains:
  they are spelled with "▁" again (and are then ordinary pieces, not matched whole);
- ties go to the longer left, then the longer right piece.

Merges a file may carry are not read, as llama.cpp's SPM tokenizer does not read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, normalizers
from tokenizers.models import BPE

from headscope.errors import ModelFormatError

SPACE = "\u2581"  # "▁", SentencePiece's visible space
_POSITION_RANKED = ("gemma2", "gemma3")  # architectures whose merge order is the file order
_NORMAL = 1  # llama.cpp's TokenType.NORMAL


def sentencepiece_backend(metadata: dict[str, Any], arch: str,
                          path: Path) -> tuple[RustTokenizer, list[str], list[int]]:
    """The backend tokenizer of a SentencePiece GGUF vocabulary, with the tokens and token types to match
    whole in text afterwards (respelled space pieces become ordinary ones)."""
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = list(metadata.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
    if len(types) != len(tokens):
        raise ModelFormatError(f"{path}: {len(types)} token types for {len(tokens)} tokens")
    if arch in _POSITION_RANKED:
        spelled = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
        types = [_NORMAL if new != old else kind for new, old, kind in zip(spelled, tokens, types)]
        tokens = spelled
        priority = {token: -float(index) for index, token in enumerate(tokens)}
    else:
        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            found = "no" if scores is None else len(scores)
            raise ModelFormatError(f"{path}: a SentencePiece vocabulary of {len(tokens)} tokens needs as many "
                                   f"tokenizer.ggml.scores, found {found}")
        priority = {token: float(score) for token, score in zip(tokens, scores)}
    vocab = {token: index for index, token in enumerate(tokens)}
    unknown = metadata.get("tokenizer.ggml.unknown_token_id")
    if unknown is not None and not 0 <= unknown < len(tokens):
        raise ModelFormatError(f"{path}: tokenizer.ggml.unknown_token_id {unknown} is outside the {len(tokens)} tokens")
    backend = RustTokenizer(BPE(  # the unknown token stands in only for a byte the vocabulary lacks
        vocab=vocab, merges=_merges(vocab, priority), fuse_unk=True, byte_fallback=True,
        unk_token=None if unknown is None else tokens[unknown],
    ))
    # No pre-tokenizer: every run of text between whole-matched tokens is one word, as in llama.cpp.
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE)] * prefix + [normalizers.Replace(" ", SPACE)])
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + [decoders.Strip(" ", 1, 0)] * prefix)  # the prepended space
    return backend, tokens, types


def _merges(vocab: dict[str, int], priority: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces, best joined piece first (ties: longer left, longer right)."""
    ranked = []
    for piece, score in priority.items():
        pairs = [(piece[:cut], piece[cut:]) for cut in range(1, len(piece))
                 if piece[:cut] in vocab and piece[cut:] in vocab]
        pairs.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        ranked.extend((score, left, right) for left, right in pairs)
    ranked.sort(key=lambda merge: (-merge[0], -len(merge[1]), -len(merge[2])))  # stable: ties keep their order
    return [(left, right) for _, left, right in ranked]
