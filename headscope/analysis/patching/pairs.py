"""Prompt pairs for causal experiments: a clean prompt, a corrupted one of the same length, two answers.

A pair is `{"clean", "corrupted", "answer", "wrong"}`: the model should say `answer` (one token) after the
clean prompt and not `wrong` (one token, another one); the corrupted prompt differs only where the
information the task needs sits, so patching between the two runs localises that information. Clean and
corrupted prompts of one pair have the same length in tokens, so positions line up.

Generators:
- `ioi_records`: indirect object identification (Wang et al. 2022), BABA and ABBA templates with names
  that are one token for the model's tokenizer; the corrupted prompt names a third person in place of the
  repeated subject ("... , Tom gave a drink to"), so neither name is the indirect object any more.
- `induction_records`: random tokens, then the same tokens again cut before the last; the answer is the
  token that followed the cut one the first time. The corrupted prompt has other random tokens in the
  first half, so nothing repeats and no induction head has anything to copy.

`pairs_dataset` reads the single-prompt `{"prompt", "answer", "wrong"}` files that ablation's logit
difference uses.

References
----------
Wang et al. (2022), "Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2
small" (the IOI templates and the ABC corruption).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from headscope.capture.datasets import TokenDataset, from_texts
from headscope.errors import InputError
from headscope.model.tokenizer import Tokenizer

FIELDS = ("clean", "corrupted", "answer", "wrong")
IOI_TEMPLATES = (
    "When{A} and{B} went to the store,{S} gave a drink to",
    "When{A} and{B} went to the park,{S} gave a ball to",
    "Then,{A} and{B} had a long argument, and afterwards{S} said to",
    "After{A} and{B} went to the office,{S} handed a letter to",
    "While{A} and{B} were working at the house,{S} gave a key to",
    "Friends{A} and{B} found a bone at the garden.{S} gave it to",
)
IOI_NAMES = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Anne", "Mark", "Paul", "Kate", "Sarah", "Lisa", "David",
    "Michael", "Chris", "Emma", "Alice", "Bob", "Jack", "Mike", "Peter", "Laura", "Henry", "George", "Rose",
    "Jane", "Adam", "Ben", "Sam", "Tim", "Joe", "Max", "Amy", "Lucy", "Eric", "Luke", "Ryan", "Steve",
)


@dataclass(frozen=True)
class PromptPairs:
    """Clean and corrupted prompts (two `TokenDataset`s with the same shape and mask), and per pair the
    answer and wrong token ids, (pairs,) each."""

    clean: TokenDataset
    corrupted: TokenDataset
    answers: torch.Tensor
    wrongs: torch.Tensor
    name: str = "pairs"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.answers)

    def subset(self, indices) -> PromptPairs:
        """The chosen pairs, in the given order."""
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return replace(self, clean=self.clean.subset(index), corrupted=self.corrupted.subset(index),
                       answers=self.answers[index], wrongs=self.wrongs[index],
                       meta={**self.meta, "subset": index.tolist()})

    def split(self, fraction: float = 0.5, seed: int = 0) -> tuple[PromptPairs, PromptPairs]:
        """Two disjoint halves (select, evaluate), a seeded shuffle; each records its pair indices in meta."""
        if len(self) < 2:
            raise InputError(f"a split needs at least two pairs, got {len(self)}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        cut = min(len(self) - 1, max(1, round(len(self) * fraction)))
        return self.subset(order[:cut].sort().values), self.subset(order[cut:].sort().values)


def _one_token(tokenizer: Tokenizer, text: str, where: str, key: str) -> int:
    ids = tokenizer.encode(text, prepend_bos=False)
    if len(ids) != 1:
        raise InputError(f"{where}: {key} {text!r} is {len(ids)} tokens, not one")
    if tokenizer.decode(ids).strip() != text.strip():
        raise InputError(f"{where}: {key} {text!r} is not in the vocabulary (it reads back as "
                         f"{tokenizer.decode(ids)!r})")
    return ids[0]


def from_records(records: list, tokenizer: Tokenizer | None, name: str = "pairs",
                 labels: list[str] | None = None) -> PromptPairs:
    """Pairs from `{"clean", "corrupted", "answer", "wrong"}` dicts, each checked; `labels[i]` names record
    i in errors ("pairs.jsonl line 3"; default "pair i+1")."""
    if tokenizer is None:
        raise InputError("prompt pairs are text: they need a model with a tokenizer")
    if not records:
        raise InputError(f"{name} is empty: no prompt pairs")
    answers, wrongs = [], []
    for number, record in enumerate(records, 1):
        here = labels[number - 1] if labels else f"pair {number}"
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in FIELDS):
            raise InputError(f'{here} needs string fields "clean", "corrupted", "answer" and "wrong"')
        answers.append(_one_token(tokenizer, record["answer"], here, "answer"))
        wrongs.append(_one_token(tokenizer, record["wrong"], here, "wrong"))
        if answers[-1] == wrongs[-1]:
            raise InputError(f"{here}: answer and wrong are the same token {record['answer']!r}")
        lengths = [len(tokenizer.encode(record[k])) for k in ("clean", "corrupted")]
        if lengths[0] != lengths[1]:
            raise InputError(f"{here}: clean is {lengths[0]} tokens but corrupted is {lengths[1]}; a pair needs "
                             "the same length so that positions line up")
    clean = from_texts([r["clean"] for r in records], tokenizer, name=f"{name}:clean")
    corrupted = from_texts([r["corrupted"] for r in records], tokenizer, name=f"{name}:corrupted")
    if len(clean) != len(records) or len(corrupted) != len(records):
        raise InputError(f"{name}: a blank prompt (every clean and corrupted prompt needs text)")
    return PromptPairs(clean, corrupted, torch.tensor(answers), torch.tensor(wrongs), name, {"n_pairs": len(records)})


def _jsonl(path: str | Path) -> list:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [(number, json.loads(line)) for number, line in enumerate(lines, 1) if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read pairs file {path}: {err}") from err
    if not records:
        raise InputError(f"pairs file {path} is empty")
    return records


def read_pairs(path: str | Path, tokenizer: Tokenizer | None) -> PromptPairs:
    """Prompt pairs from a JSONL file of `{"clean", "corrupted", "answer", "wrong"}`, one per line."""
    numbered = _jsonl(path)
    labels = [f"{path} line {number}" for number, _ in numbered]
    pairs = from_records([record for _, record in numbered], tokenizer, Path(path).name, labels)
    return replace(pairs, meta={**pairs.meta, "file": str(path)})


def pairs_dataset(path: str | Path, tokenizer: Tokenizer | None) -> tuple[TokenDataset, torch.Tensor, torch.Tensor]:
    """Single prompts from a JSONL file of {"prompt", "answer", "wrong"} (ablation's logit difference):
    the prompts, and the answer and wrong token ids (prompts,); each answer must be one token."""
    if tokenizer is None:
        raise InputError("logit-diff needs a model with a tokenizer")
    numbered = _jsonl(path)
    answers, wrongs = [], []
    for number, record in numbered:
        here = f"{path} line {number}"
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "answer", "wrong")):
            raise InputError(f'{here} needs string fields "prompt", "answer" and "wrong"')
        answers.append(_one_token(tokenizer, record["answer"], here, "answer"))
        wrongs.append(_one_token(tokenizer, record["wrong"], here, "wrong"))
    dataset = from_texts([r["prompt"] for _, r in numbered], tokenizer, name=f"pairs:{Path(path).name}")
    return dataset, torch.tensor(answers), torch.tensor(wrongs)
