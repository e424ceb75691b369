"""Generated prompt pairs: indirect object identification and induction, as JSON-ready records.

Each generator returns `{"clean", "corrupted", "answer", "wrong"}` dicts (see `pairs.from_records`),
seeded, and checked against the model's tokenizer: every name or token is one token, and clean and
corrupted prompts tokenize to the same length. A pair that would not is drawn again.
"""

from __future__ import annotations

import random

from headscope.analysis.patching.pairs import IOI_NAMES, IOI_TEMPLATES
from headscope.errors import InputError
from headscope.model.tokenizer import Tokenizer

_ATTEMPTS = 50  # draws per wanted pair before giving up on a tokenizer


def _require(tokenizer: Tokenizer | None) -> Tokenizer:
    if tokenizer is None:
        raise InputError("generating prompt pairs needs a model with a tokenizer")
    return tokenizer


def single_token_names(tokenizer: Tokenizer) -> list[str]:
    """The IOI names that are one token after a space (" Mary") for this tokenizer."""
    tokenizer = _require(tokenizer)
    return [name for name in IOI_NAMES if _one_token(tokenizer, " " + name) is not None]


def _one_token(tokenizer: Tokenizer, text: str) -> int | None:
    """The id `text` is as one token that decodes back to it, else None (a word the vocabulary refuses too)."""
    try:
        ids = tokenizer.encode(text, prepend_bos=False)
    except InputError:  # a vocabulary without the word, with no unknown token to read it as
        return None
    return ids[0] if len(ids) == 1 and tokenizer.decode(ids).strip() == text.strip() else None


def ioi_records(tokenizer: Tokenizer | None, n: int, seed: int = 0) -> list[dict]:
    """`n` IOI pairs, half ABBA ("When Mary and John ..., John gave a drink to" -> Mary) and half BABA
    ("When John and Mary ..., John ..." -> Mary); wrong is the subject, and the corrupted prompt has a
    third name where the subject is repeated."""
    tokenizer = _require(tokenizer)
    names = single_token_names(tokenizer)
    if len(names) < 3:
        raise InputError(f"IOI needs three names that are single tokens; this tokenizer has {len(names)} "
                         f"of the {len(IOI_NAMES)} it tries")
    rng = random.Random(seed)
    records = []
    for attempt in range(n * _ATTEMPTS):
        if len(records) == n:
            break
        template = IOI_TEMPLATES[rng.randrange(len(IOI_TEMPLATES))]
        io, subject, third = (" " + name for name in rng.sample(names, 3))
        first, second = (io, subject) if len(records) % 2 == 0 else (subject, io)  # ABBA, then BABA
        clean = template.format(A=first, B=second, S=subject)
        corrupted = template.format(A=first, B=second, S=third)
        if len(tokenizer.encode(clean)) == len(tokenizer.encode(corrupted)):
            records.append({"clean": clean, "corrupted": corrupted, "answer": io, "wrong": subject,
                            "template": "ABBA" if first == io else "BABA"})
    if len(records) < n:
        raise InputError(f"could make only {len(records)} of {n} IOI pairs of equal length for this tokenizer")
    return records


def _token_pool(tokenizer: Tokenizer, seed: int, size: int = 4000) -> tuple[list[str], str]:
    """Token strings that encode back to themselves alone, and the separator that joins them into text
    that tokenizes as the sequence: "" for tokens with their own leading space (BPE), " " for words."""
    special = set(tokenizer.special_ids)
    ids = [i for i in range(tokenizer.vocab_size) if i not in special]
    rng = random.Random(seed)
    candidates = rng.sample(ids, min(size, len(ids)))
    spaced, words = [], []
    for i in candidates:
        text = tokenizer.decode([i])
        if tokenizer.encode(text, prepend_bos=False) != [i] or not text.strip().isalnum():
            continue
        (spaced if text.startswith(" ") and text[1:].isalnum() else words).append(text)
    return (spaced, "") if len(spaced) >= len(words) else (words, " ")


def induction_records(tokenizer: Tokenizer | None, n: int, seed: int = 0, period: int = 8) -> list[dict]:
    """`n` induction pairs: clean = random tokens A (`period` of them) then A again without its last
    token, answer = that last token; corrupted = other random tokens B then the same A[:-1], so nothing
    repeats; wrong = a random token in neither."""
    tokenizer = _require(tokenizer)
    if period < 2:
        raise InputError(f"an induction pair needs a period of at least 2 tokens, got {period}")
    pool, sep = _token_pool(tokenizer, seed)
    if len(pool) < 2 * period + 1:
        raise InputError(f"this tokenizer has only {len(pool)} round-tripping tokens; a period of {period} needs "
                         f"{2 * period + 1}")
    rng = random.Random(seed)
    records = []
    for attempt in range(n * _ATTEMPTS):
        if len(records) == n:
            break
        drawn = rng.sample(pool, 2 * period + 1)
        first, other, wrong = drawn[:period], drawn[period : 2 * period], drawn[-1]
        clean = sep.join(first + first[:-1])
        corrupted = sep.join(other + first[:-1])
        want = 2 * period - 1
        if len(tokenizer.encode(clean, prepend_bos=False)) == want == len(tokenizer.encode(corrupted, prepend_bos=False)):
            records.append({"clean": clean, "corrupted": corrupted, "answer": first[-1], "wrong": wrong})
    if len(records) < n:
        raise InputError(f"could make only {len(records)} of {n} induction pairs for this tokenizer")
    return records


GENERATORS = {"ioi": ioi_records, "induction": induction_records}


def generate_records(task: str, tokenizer: Tokenizer | None, n: int, seed: int = 0, period: int = 8) -> list[dict]:
    """`n` pairs of a task by name ("ioi" or "induction"; `period` is induction's)."""
    if task == "ioi":
        return ioi_records(tokenizer, n, seed)
    if task == "induction":
        return induction_records(tokenizer, n, seed, period)
    raise InputError(f"unknown prompt-pair task {task!r}: use {', '.join(GENERATORS)}")
