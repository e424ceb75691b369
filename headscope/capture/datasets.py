"""Datasets of token ids that the capture engine streams through a model.

A `TokenDataset` is a right-padded (prompts, pos) id tensor, its mask, whether position 0 is a BOS/[CLS]
token, and a record (`meta`) of how it was made. Constructors:

- `repeated_random_tokens`: seeded random sequences repeated a few times, the standard induction probe;
- `from_texts` / `from_file`: texts as prompts, one per text ("pad") or packed into fixed windows ("pack");
- `from_tensor`: ids you already have;
- `load_dataset`: a dataset spec (what the command line's dataset option takes), dispatched to one of the above.

`seq_len` always counts content tokens: BOS (or [CLS] ... [SEP] for encoders) comes on top, so a prompt
is at most seq_len + 1 tokens long for a decoder, seq_len + 2 for BERT. This is TransformerLens' convention
for repeated tokens, and it keeps the period of a repeated-random prompt at seq_len // 2.

Where each token occurred before (the duplicate-token and induction pairs) is in `occurrences.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from headscope.errors import InputError
from headscope.model.tokenizer import Tokenizer

MODES = ("pad", "pack")
SPEC_FORMS = "repeated-random, repeated-random:period=P:repeats=R, or a path to a .txt or .jsonl file"


@dataclass(frozen=True)
class TokenDataset:
    """Prompts as right-padded token ids, with their mask, whether they start with BOS, and how they were made."""

    tokens: torch.Tensor  # (prompts, pos) int64, right-padded
    attention_mask: torch.Tensor | None = None  # (prompts, pos) int64, 1 = real token; None when nothing is padded
    has_bos: bool = False  # position 0 of every prompt is BOS/[CLS], which some statistics leave out
    name: str = "tensor"
    meta: dict = field(default_factory=dict)  # everything needed to make it again

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batches(self, batch_size: int, within: range | None = None) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None]]:
        """Consecutive prompts (of the range `within`, default all), `batch_size` at a time: (which rows,
        their tokens, their mask or None)."""
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        within = range(len(self)) if within is None else within
        for start in range(within.start, within.stop, batch_size):
            rows = slice(start, min(start + batch_size, within.stop))
            mask = None if self.attention_mask is None else self.attention_mask[rows]
            yield rows, self.tokens[rows], mask

    @property
    def real(self) -> torch.Tensor:
        """(prompts, pos) bool: True on real tokens, False on padding."""
        return real_mask(self.tokens, self.attention_mask)

    def digest(self) -> str:
        """sha256 of the exact prompts (tokens, padding, BOS): what a resumable or multi-process run checks."""
        digest = hashlib.sha256(self.tokens.cpu().numpy().tobytes())
        if self.attention_mask is not None:
            digest.update(self.attention_mask.cpu().numpy().tobytes())
        digest.update(b"bos" if self.has_bos else b"")
        return digest.hexdigest()

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TokenDataset:
        """The chosen prompts, in the given order, with padding columns no prompt uses any more dropped."""
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if len(index) == 0:
            raise InputError("a subset needs at least one prompt")
        bad = index[(index < 0) | (index >= len(self))]
        if len(bad):
            raise InputError(f"prompt {int(bad[0])} does not exist: the dataset has {len(self)} prompts")
        tokens, mask = self.tokens[index], None
        if self.attention_mask is not None:
            mask = self.attention_mask[index]
            width = int(mask.sum(1).max())
            tokens, mask = tokens[:, :width], mask[:, :width]
            mask = None if bool(mask.all()) else mask
        return replace(self, tokens=tokens, attention_mask=mask, meta={**self.meta, "subset": index.tolist()})


# ---------------------------------------------------------------------------------------------------------
# Repeated random tokens


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
    """Random sequences of `period` tokens, each repeated `repeats` times: the induction probe of
    Olsson et al. (2022), as TransformerLens' demos build it.

    Ids are drawn uniformly from [low, vocab_size) less `exclude_ids` (pass the special tokens). Within one
    period they are drawn without replacement, so every token of a later period has exactly one earlier
    occurrence per earlier period and its induction target is unambiguous; only when the period is longer
    than the allowed ids do they repeat (meta["without_replacement"] is then False). A seeded CPU
    `torch.Generator` makes the same tokens on every machine. BOS is prepended when `bos_token_id` is given.
    """
    if n_prompts < 1 or period < 1:
        raise InputError(f"need at least one prompt and a period of at least 1 (got n_prompts={n_prompts}, "
                         f"period={period})")
    if repeats < 2:
        raise InputError(f"induction needs at least two periods; got repeats={repeats}")
    if low < 0:
        raise InputError(f"token ids start at 0; got low={low}")
    allowed = torch.arange(low, vocab_size)
    excluded = sorted({int(i) for i in exclude_ids})
    allowed = allowed[~torch.isin(allowed, torch.tensor(excluded, dtype=torch.long))]
    if len(allowed) == 0:
        raise InputError(f"no token ids left to draw from in [{low}, {vocab_size}) after excluding {len(excluded)}")
    generator = torch.Generator().manual_seed(seed)
    without_replacement = period <= len(allowed)
    if without_replacement:
        picks = torch.stack([torch.randperm(len(allowed), generator=generator)[:period] for _ in range(n_prompts)])
    else:
        picks = torch.randint(0, len(allowed), (n_prompts, period), generator=generator)
    tokens = allowed[picks].repeat(1, repeats)  # (n_prompts, period * repeats)
    if bos_token_id is not None:
        tokens = torch.cat([torch.full((n_prompts, 1), bos_token_id, dtype=torch.long), tokens], dim=1)
    meta = {"n_prompts": n_prompts, "seed": seed, "period": period, "repeats": repeats, "vocab_size": vocab_size,
            "low": low, "bos_token_id": bos_token_id, "exclude_ids": excluded,
            "without_replacement": without_replacement}
    return TokenDataset(tokens, None, bos_token_id is not None, "repeated-random", meta)


# ---------------------------------------------------------------------------------------------------------
# Texts and text files


def from_texts(
    texts: Sequence[str],
    tokenizer: Tokenizer | None,
    mode: str = "pad",
    seq_len: int | None = None,
    prepend_bos: bool | None = None,
    name: str = "texts",
) -> TokenDataset:
    """Texts as prompts, tokenized as `tokenizer.encode` would (BOS, or the encoder's [CLS] ... [SEP]).

    "pad": one prompt per text, its content cut to `seq_len` tokens if given (meta counts the cut ones),
    right-padded with a mask. Good for prompts that mean something one by one.
    "pack": all texts' content joined, with EOS between texts when the tokenizer has one, cut into
    windows of `seq_len` content tokens, each framed like one text (BOS first); the incomplete last
    window is dropped and meta counts its tokens. Good for corpus statistics over full-length contexts.
    Blank texts are skipped and their indices recorded in meta["skipped_blank"].
    """
    if tokenizer is None:
        raise InputError("a model with no tokenizer was given text: pass token ids instead (from_tensor)")
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not one string: wrap it as [text]")
    if mode not in MODES:
        raise InputError(f"unknown dataset mode {mode!r}: use {' or '.join(MODES)}")
    if seq_len is not None and seq_len < 1:
        raise InputError(f"seq_len must be at least 1, got {seq_len}")
    if mode == "pack" and seq_len is None:
        raise InputError("pack mode cuts texts into windows of seq_len tokens: give seq_len", parameter="seq_len")
    not_text = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if not_text:
        raise InputError(f"texts must be strings, got a {not_text[0]}")
    skipped = [n for n, text in enumerate(texts) if not text.strip()]
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise InputError("the dataset is empty: no text with anything but whitespace")
    encodings = tokenizer.backend.encode_batch(texts, add_special_tokens=False)
    for text, encoding in zip(texts, encodings):
        tokenizer.check_known(text, encoding)
    content = [e.ids for e in encodings]
    if not any(content):
        raise InputError("the dataset is empty: the tokenizer made no tokens from these texts")
    prefix, suffix = _frame(tokenizer, prepend_bos, texts, content)
    meta = {"mode": mode, "seq_len": seq_len, "n_texts": len(texts), "skipped_blank": skipped}
    if mode == "pad":
        rows, cut = _cut_each(content, seq_len)
        meta["n_truncated"] = cut
    else:
        rows, dropped, n_tokens = _pack(content, seq_len, tokenizer.eos_token_id)
        meta.update(n_tokens=n_tokens, n_dropped_tokens=dropped)
    tokens, mask = _right_pad([prefix + row + suffix for row in rows], tokenizer.pad_token_id)
    return TokenDataset(tokens, mask, bool(prefix), name, meta)


def _frame(tokenizer: Tokenizer, prepend_bos: bool | None, texts: list[str], content: list[list[int]]):
    """The ids `tokenizer.encode` puts before and after a text's own tokens, found once so that a cut or
    packed text gets the same frame: [BOS] for decoders, the post-processor's [CLS] / [SEP] for encoders."""
    prefix, suffix = [], []
    if tokenizer.uses_post_processor:
        # Read the frame off one real text: special tokens the post-processor adds have no sequence id.
        probe = next(n for n, ids in enumerate(content) if ids)
        framed = tokenizer.backend.post_process(tokenizer.backend.encode(texts[probe], add_special_tokens=False))
        inside = [n for n, s in enumerate(framed.sequence_ids) if s is not None]
        prefix, suffix = framed.ids[: inside[0]], framed.ids[inside[-1] + 1 :]
    if tokenizer.resolve_bos(prepend_bos):
        prefix = [tokenizer.bos_token_id, *prefix]
    return prefix, suffix


def _cut_each(content: list[list[int]], seq_len: int | None) -> tuple[list[list[int]], int]:
    if seq_len is None:
        return content, 0
    return [ids[:seq_len] for ids in content], sum(len(ids) > seq_len for ids in content)


def _pack(content: list[list[int]], seq_len: int, eos: int | None) -> tuple[list[list[int]], int, int]:
    stream: list[int] = []
    for n, ids in enumerate(content):
        if n and eos is not None:
            stream.append(eos)
        stream += ids
    n_windows = len(stream) // seq_len
    if n_windows == 0:
        raise InputError(f"the texts hold {len(stream)} tokens, fewer than one window of seq_len={seq_len}: "
                         f"use a smaller seq_len or pad mode")
    windows = [stream[w * seq_len : (w + 1) * seq_len] for w in range(n_windows)]
    return windows, len(stream) - n_windows * seq_len, len(stream)


def _right_pad(rows: list[list[int]], pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        tokens[n, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[n, : len(row)] = 1
    return tokens, None if bool(mask.all()) else mask


def from_file(
    path: str | Path,
    tokenizer: Tokenizer | None,
    mode: str = "pad",
    seq_len: int | None = None,
    prepend_bos: bool | None = None,
) -> TokenDataset:
    """Prompts from a text file: `.txt` holds one prompt per non-blank line (pad mode) or one running text
    (pack mode); `.jsonl` holds one JSON object with a "text" string per line. Files are read as UTF-8;
    meta records the path and the file's sha256, so a result can be traced to the exact file."""
    path = Path(path)
    if path.suffix not in (".txt", ".jsonl"):
        raise InputError(f"dataset file {path} is neither .txt (one prompt per line) nor .jsonl (a \"text\" "
                         f"field per line)")
    if path.is_dir():
        raise InputError(f"dataset file {path} is a directory: name a .txt or .jsonl file")
    if not path.is_file():
        raise InputError(f"dataset file {path} does not exist")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is not part of the first prompt
    except UnicodeDecodeError as err:
        raise InputError(f"dataset file {path} is not UTF-8 text (byte {err.start} cannot be decoded)") from err
    except OSError as err:
        raise InputError(f"dataset file {path} cannot be read: {err.strerror}") from err
    if not text.strip():
        raise InputError(f"dataset file {path} is empty")
    if path.suffix == ".jsonl":
        texts = [_jsonl_text(line, path, n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif mode == "pack":
        texts = [text]
    else:
        texts = [line for line in text.splitlines() if line.strip()]
    dataset = from_texts(texts, tokenizer, mode, seq_len, prepend_bos, name=f"file:{path.name}")
    return replace(dataset, meta={**dataset.meta, "path": str(path), "sha256": hashlib.sha256(raw).hexdigest()})


def _jsonl_text(line: str, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{path} line {number} is not JSON: {err.msg}") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InputError(f'{path} line {number} has no "text" string')
    return record["text"]


# ---------------------------------------------------------------------------------------------------------
# Token ids you already have, and the command line's dispatcher


def from_tensor(tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, has_bos: bool = False) -> TokenDataset:
    """Token ids you already have, (prompts, pos), right-padded if `attention_mask` (1 = real) is given."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype.is_floating_point \
            or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise InputError(f"tokens must be a 2-D integer tensor (prompts, pos), got {got}; for one prompt use "
                         f"tokens[None]")
    if tokens.numel() == 0:
        raise InputError(f"the dataset is empty: tokens have shape {tuple(tokens.shape)}")
    if int(tokens.min()) < 0:
        raise InputError(f"token ids must be non-negative, found {int(tokens.min())}")
    tokens = tokens.detach().to("cpu", torch.long)
    mask = None if attention_mask is None else _check_mask(attention_mask, tokens, has_bos)
    return TokenDataset(tokens, mask, has_bos, "tensor", {"shape": list(tokens.shape)})


def _check_mask(mask: torch.Tensor, tokens: torch.Tensor, has_bos: bool) -> torch.Tensor | None:
    if not isinstance(mask, torch.Tensor) or mask.shape != tokens.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"attention_mask shape {got} != tokens shape {tuple(tokens.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError("attention_mask must hold only 0 (padding) and 1 (real token)")
    mask = mask.detach().to("cpu", torch.long)
    # Right padding: a row's real tokens come first, so its mask never rises again after a 0.
    if bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise InputError("attention_mask must be right-padded: each row's real tokens first, then padding")
    if not bool(mask[:, 0].all()):
        raise InputError("every prompt needs at least one real token" + (" (its BOS)" if has_bos else ""))
    return None if bool(mask.all()) else mask


def load_dataset(
    spec: str,
    tokenizer: Tokenizer | None,
    *,
    seq_len: int | None = None,
    num_prompts: int | None = None,
    seed: int = 0,
    vocab_size: int | None = None,
    bos_token_id: int | None = None,
    exclude_ids: Sequence[int] = (),
    mode: str = "pad",
) -> TokenDataset:
    """What the command line's --dataset names.

    `repeated-random[:period=P][:repeats=R]`: `num_prompts` prompts of R periods (default 2) of P random
    tokens, P defaulting to seq_len // R so that a prompt holds about seq_len tokens plus BOS.
    A `.txt` or `.jsonl` path: `from_file` in `mode`, then the first `num_prompts` prompts (all if None).
    """
    head, *options = spec.split(":")
    if head == "repeated-random":
        parsed = _options(options, spec)
        repeats = parsed.get("repeats", 2)
        if "period" not in parsed and seq_len is None:
            raise InputError(f"{spec!r} needs seq_len or a period: repeated-random:period=P", parameter="seq_len")
        period = parsed.get("period", (seq_len or 0) // repeats)
        if period < 2:
            raise InputError(f"seq_len={seq_len} is shorter than two periods (x{repeats}) of at least 2 random tokens: "
                             f"induction needs them; use seq_len {2 * repeats} or more", parameter="seq_len")
        if num_prompts is None or vocab_size is None:
            raise InputError("repeated-random needs num_prompts and vocab_size")
        return repeated_random_tokens(num_prompts, period, repeats, vocab_size, seed, bos_token_id, exclude_ids)
    if Path(spec).suffix in (".txt", ".jsonl"):
        dataset = from_file(spec, tokenizer, mode, seq_len)
        return dataset if num_prompts is None or num_prompts >= len(dataset) else dataset.subset(range(num_prompts))
    raise InputError(f"unknown dataset {spec!r}: use {SPEC_FORMS}")


def _options(parts: list[str], spec: str) -> dict[str, int]:
    options = {}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in ("period", "repeats") or not value.isdigit() or key in options:
            raise InputError(f"bad dataset option {part!r} in {spec!r}: use period=N and repeats=N, once each")
        options[key] = int(value)
    return options


def fit_seq_len(model, seq_len: int | None, default: int = 64) -> int:
    """`seq_len` if given, else `default` cut to what fits the model's context (BOS and an encoder's
    [CLS] ... [SEP] frame take a few positions)."""
    return seq_len if seq_len is not None else max(2, min(default, model.cfg.n_ctx - 2))


def check_request(model, spec: str, seq_len: int, num_prompts: int, memory: int | None = None) -> None:
    """Refuse, before anything is built, prompts longer than the model's context and a repeated-random
    request whose token ids and per-prompt statistics would not fit in `memory` bytes (default: what
    `headscope.capture.budget.available_memory` finds), with the figures."""
    from headscope.capture.budget import available_memory

    frame = 2 if model.tokenizer is not None and model.tokenizer.uses_post_processor else 1
    if seq_len + frame > model.cfg.n_ctx:
        raise InputError(f"seq_len={seq_len} tokens per prompt (plus {frame} for BOS or the encoder's frame) do "
                         f"not fit the model's context of {model.cfg.n_ctx} positions: use at most "
                         f"{model.cfg.n_ctx - frame}", parameter="seq_len")
    if not spec.startswith("repeated-random"):
        return  # a file's prompts are bounded by the file
    # token ids and mask of the prompts and of the shuffled control (int64), and about a dozen float64
    # per-prompt sums per head: an estimate that errs high
    per_prompt = 3 * 8 * (seq_len + frame) + 12 * 8 * model.cfg.n_layers * model.cfg.n_heads
    need = per_prompt * num_prompts
    budget = available_memory(torch.device("cpu")) if memory is None else memory
    if need > budget:
        raise InputError(f"num_prompts={num_prompts} prompts of {seq_len} tokens need about {_size(need)} of "
                         f"memory, more than the {_size(budget)} available: use at most {budget // per_prompt} "
                         "prompts", parameter="num_prompts")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def dataset_for_model(model, spec: str, *, seq_len: int | None = None, num_prompts: int, seed: int = 0,
                      mode: str = "pad", default_seq_len: int = 64) -> TokenDataset:
    """`load_dataset` with the model's tokenizer, vocabulary, BOS and special tokens filled in.

    seq_len: content tokens per prompt; None takes `default_seq_len`, cut to the model's context.
    """
    seq_len = fit_seq_len(model, seq_len, default_seq_len)
    check_request(model, spec, seq_len, num_prompts)
    tokenizer = model.tokenizer
    if tokenizer is not None:
        bos = tokenizer.bos_token_id if tokenizer.resolve_bos(None) else None
    else:  # a model folder without tokenizer files: BOS as its config.json names it
        bos = getattr(model, "bos_token_id", None)
    dataset = load_dataset(
        spec, tokenizer, seq_len=seq_len, num_prompts=num_prompts, seed=seed, vocab_size=model.cfg.d_vocab,
        bos_token_id=bos, exclude_ids=tokenizer.special_ids if tokenizer is not None else [bos] if bos is not None
        else (), mode=mode,
    )
    if dataset.name == "repeated-random" and tokenizer is not None and tokenizer.uses_post_processor:
        return _framed(dataset, *_frame(tokenizer, None, ["a"], [[0]]))
    return dataset


def _framed(dataset: TokenDataset, prefix: list[int], suffix: list[int]) -> TokenDataset:
    """Random-token prompts inside an encoder's [CLS] ... [SEP], as every input it was trained on."""
    n = len(dataset)
    tokens = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(n, -1), dataset.tokens,
                        torch.tensor(suffix, dtype=torch.long).expand(n, -1)], dim=1)
    return replace(dataset, tokens=tokens, has_bos=bool(prefix), meta={**dataset.meta, "frame": [prefix, suffix]})


def real_mask(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, pos) bool, True on real tokens: the mask as booleans, or all True when there is none."""
    return torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
