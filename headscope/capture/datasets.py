"""Datasets of token ids that the capture engine streams through a model.

A `TokenDataset` is a right-padded (prompts, pos) id tensor with its mask and a record of how it was
made. Constructors: seeded repeated random tokens (the standard induction probe), texts or a text file
(one prompt each, padded, or packed into fixed windows), or a tensor of ids. The pair functions at the
end list, without any pos x pos matrix, where each token occurred before: what the duplicate-token
and induction statistics add up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from headscope.errors import InputError
from headscope.model.tokenizer import Tokenizer


@dataclass(frozen=True)
class TokenDataset:
    tokens: torch.Tensor  # (prompts, pos) int64, right-padded
    attention_mask: torch.Tensor | None = None  # (prompts, pos), 1 = real token; None when nothing is padded
    has_bos: bool = False  # position 0 of every prompt is BOS/[CLS], which some statistics leave out
    name: str = "tensor"
    meta: dict = field(default_factory=dict)  # everything needed to make it again

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batches(self, batch_size: int) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None]]:
        for start in range(0, len(self), batch_size):
            rows = slice(start, min(start + batch_size, len(self)))
            mask = None if self.attention_mask is None else self.attention_mask[rows]
            yield rows, self.tokens[rows], mask

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "TokenDataset":
        index = torch.as_tensor(indices, dtype=torch.long)
        mask = None if self.attention_mask is None else self.attention_mask[index]
        return replace(self, tokens=self.tokens[index], attention_mask=mask)


def repeated_random_tokens(
    n_prompts: int,
    period: int,
    repeats: int = 2,
    vocab_size: int = 50257,
    seed: int = 0,
    bos_token_id: int | None = None,
    exclude_ids: Sequence[int] = (),
    low: int = 0,
) -> TokenDataset:
    """Random sequences of `period` tokens, each repeated `repeats` times (Olsson et al.'s induction probe).

    Tokens are drawn without replacement within a period (when the vocabulary allows), so each token of a
    later period has exactly one earlier occurrence per earlier period and its induction target is
    unambiguous. A seeded CPU generator makes the same tokens on every machine.
    """
    if n_prompts < 1 or period < 1:
        raise InputError(f"need at least one prompt and a period of at least 1 (got {n_prompts}, {period})")
    if repeats < 2:
        raise InputError(f"induction needs at least two periods; got repeats={repeats}")
    allowed = torch.tensor(sorted(set(range(low, vocab_size)) - set(exclude_ids)), dtype=torch.long)
    if len(allowed) == 0:
        raise InputError(f"no token ids left to draw from in [{low}, {vocab_size}) after exclusions")
    generator = torch.Generator().manual_seed(seed)
    if period <= len(allowed):
        picks = torch.stack([torch.randperm(len(allowed), generator=generator)[:period] for _ in range(n_prompts)])
    else:
        picks = torch.randint(0, len(allowed), (n_prompts, period), generator=generator)
    tokens = allowed[picks].repeat(1, repeats)
    if bos_token_id is not None:
        tokens = torch.cat([torch.full((n_prompts, 1), bos_token_id, dtype=torch.long), tokens], dim=1)
    meta = {"seed": seed, "period": period, "repeats": repeats, "vocab_size": vocab_size, "low": low,
            "bos_token_id": bos_token_id, "n_excluded": len(set(exclude_ids))}
    return TokenDataset(tokens, None, bos_token_id is not None, "repeated-random", meta)


def from_texts(
    texts: Sequence[str],
    tokenizer: Tokenizer | None,
    mode: str = "pad",
    seq_len: int | None = None,
    prepend_bos: bool | None = None,
    name: str = "texts",
) -> TokenDataset:
    """Texts as prompts: "pad", one prompt per text (cut to seq_len tokens if given); or "pack", all texts
    joined (EOS between them when the tokenizer has one) and cut into windows of seq_len tokens, each
    after a BOS when the model has one; the incomplete last window is dropped."""
    if tokenizer is None:
        raise InputError("a model with no tokenizer was given text: pass token ids instead")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InputError("the dataset is empty: no non-blank text")
    if mode == "pad":
        return _padded(texts, tokenizer, seq_len, prepend_bos, name)
    if mode == "pack":
        return _packed(texts, tokenizer, seq_len, prepend_bos, name)
    raise InputError(f"unknown dataset mode {mode!r}: use pad or pack")


def _bos_of(tokenizer: Tokenizer, prepend_bos: bool | None) -> bool:
    if prepend_bos is None:
        return tokenizer.bos_token_id is not None and not tokenizer.uses_post_processor
    return prepend_bos


def _padded(texts, tokenizer, seq_len, prepend_bos, name) -> TokenDataset:
    rows = [tokenizer.encode(t, prepend_bos) for t in texts]
    truncated = sum(len(r) > seq_len for r in rows) if seq_len else 0
    rows = [r[:seq_len] for r in rows] if seq_len else rows
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    has_bos = _bos_of(tokenizer, prepend_bos) or tokenizer.uses_post_processor
    meta = {"mode": "pad", "seq_len": seq_len, "n_texts": len(texts), "n_truncated": truncated}
    return TokenDataset(tokens, None if bool(mask.all()) else mask, has_bos, name, meta)


def _packed(texts, tokenizer, seq_len, prepend_bos, name) -> TokenDataset:
    if not seq_len or seq_len < 2:
        raise InputError("pack mode needs --seq-len of at least 2")
    stream: list[int] = []
    for text in texts:
        stream += tokenizer.encode(text, prepend_bos=False)
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
    bos = _bos_of(tokenizer, prepend_bos) and tokenizer.bos_token_id is not None
    body = seq_len - 1 if bos else seq_len
    n_windows = len(stream) // body
    if n_windows == 0:
        raise InputError(f"the texts hold {len(stream)} tokens, fewer than one window of {seq_len}")
    tokens = torch.tensor(stream[: n_windows * body], dtype=torch.long).view(n_windows, body)
    if bos:
        tokens = torch.cat([torch.full((n_windows, 1), tokenizer.bos_token_id), tokens], dim=1)
    meta = {"mode": "pack", "seq_len": seq_len, "n_texts": len(texts), "n_tokens": len(stream),
            "n_dropped": len(stream) - n_windows * body}
    return TokenDataset(tokens, None, bos, name, meta)


def from_file(path: str | Path, tokenizer: Tokenizer | None, mode: str = "pad", seq_len: int | None = None,
              prepend_bos: bool | None = None) -> TokenDataset:
    """A `.txt` file (one prompt per non-blank line, or the whole text when packed) or a `.jsonl` file
    with a "text" field per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset file {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"dataset file {path} is not UTF-8 text") from err
    if path.suffix == ".jsonl":
        texts = [_jsonl_text(line, path, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif mode == "pack":
        texts = [text]
    else:
        texts = text.splitlines()
    if not any(t.strip() for t in texts):
        raise InputError(f"dataset file {path} is empty")
    dataset = from_texts(texts, tokenizer, mode, seq_len, prepend_bos, name=f"file:{path.name}")
    return replace(dataset, meta={**dataset.meta, "path": str(path)})


def _jsonl_text(line: str, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{path} line {number} is not JSON: {err.msg}") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InputError(f'{path} line {number} has no "text" string')
    return record["text"]


def from_tensor(tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, has_bos: bool = False) -> TokenDataset:
    """Token ids you already have, (prompts, pos)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise InputError("tokens must be a 2-D integer tensor (prompts, pos)")
    if tokens.numel() and int(tokens.min()) < 0:
        raise InputError("token ids must be non-negative")
    if attention_mask is not None and attention_mask.shape != tokens.shape:
        raise InputError(f"attention_mask shape {tuple(attention_mask.shape)} != tokens {tuple(tokens.shape)}")
    return TokenDataset(tokens.long(), attention_mask, has_bos, "tensor", {"shape": list(tokens.shape)})


def load_dataset(spec: str, tokenizer: Tokenizer | None, *, seq_len: int, num_prompts: int, seed: int = 0,
                 vocab_size: int, bos_token_id: int | None = None, exclude_ids: Sequence[int] = (),
                 mode: str = "pad") -> TokenDataset:
    """What the command line's --dataset names: `repeated-random[:period=P][:repeats=R]` or a .txt/.jsonl file.

    For repeated random tokens, seq_len is the length without BOS and the period defaults to seq_len // 2.
    """
    if spec.startswith("repeated-random"):
        options = dict(_option(part, spec) for part in spec.split(":")[1:])
        repeats = options.get("repeats", 2)
        period = options.get("period", seq_len // repeats)
        return repeated_random_tokens(num_prompts, period, repeats, vocab_size, seed, bos_token_id, exclude_ids)
    if Path(spec).suffix in (".txt", ".jsonl") or Path(spec).exists():
        dataset = from_file(spec, tokenizer, mode, seq_len)
        return dataset.subset(range(min(num_prompts, len(dataset)))) if num_prompts else dataset
    raise InputError(f"unknown dataset {spec!r}: use repeated-random[:period=P][:repeats=R] or a .txt/.jsonl file")


def dataset_for_model(model, spec: str, *, seq_len: int, num_prompts: int, seed: int = 0,
                      mode: str = "pad") -> TokenDataset:
    """`load_dataset` with the model's tokenizer, vocabulary, BOS and special tokens filled in."""
    tokenizer = model.tokenizer
    prepends_bos = tokenizer is not None and tokenizer.bos_token_id is not None and not tokenizer.uses_post_processor
    return load_dataset(
        spec, tokenizer, seq_len=seq_len, num_prompts=num_prompts, seed=seed, vocab_size=model.cfg.d_vocab,
        bos_token_id=tokenizer.bos_token_id if prepends_bos else None,
        exclude_ids=tokenizer.special_ids if tokenizer is not None else (), mode=mode,
    )


def _option(part: str, spec: str) -> tuple[str, int]:
    key, _, value = part.partition("=")
    if key not in ("period", "repeats") or not value.isdigit():
        raise InputError(f"bad dataset option {part!r} in {spec!r}: use period=N or repeats=N")
    return key, int(value)


def earlier_occurrence_pairs(tokens: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(batch, query i, key j) for every j < i with tokens[j] == tokens[i], both real tokens.

    TransformerLens' duplicate-token detection pattern, as a list: rows are sorted by token id, so equal
    ids form runs, and pairs are read off the runs; memory grows with the number of pairs, not pos^2.
    """
    n_pos = tokens.shape[1]
    # Padding gets a distinct id per position so it never forms a run.
    ids = torch.where(real, tokens, -1 - torch.arange(n_pos, device=tokens.device))
    order = torch.sort(ids * n_pos + torch.arange(n_pos, device=tokens.device), dim=1).indices  # by id, then pos
    sorted_ids = ids.gather(1, order)
    batch, query, key = [], [], []
    for lag in range(1, n_pos):
        same = sorted_ids[:, lag:] == sorted_ids[:, :-lag]
        if not same.any():
            break  # runs are contiguous: no pair at this lag means none at any longer lag
        b, s = same.nonzero(as_tuple=True)
        batch.append(b)
        query.append(order[b, s + lag])
        key.append(order[b, s])
    if not batch:
        empty = torch.zeros(0, dtype=torch.long, device=tokens.device)
        return empty, empty, empty
    return torch.cat(batch), torch.cat(query), torch.cat(key)


def induction_target_pairs(tokens: torch.Tensor, real: torch.Tensor, has_bos: bool = False) -> tuple[torch.Tensor, ...]:
    """(batch, query i, key j + 1) for every earlier occurrence j of token i: the token that followed it.

    TransformerLens' induction pattern is its duplicate pattern shifted right by one column; this is that
    shift applied to `earlier_occurrence_pairs`. j + 1 <= i always, so the target is visible to a causal
    head. A BOS at position 0 never matches a later token, so it needs no special case here.
    """
    b, i, j = earlier_occurrence_pairs(tokens, real)
    return b, i, j + 1
