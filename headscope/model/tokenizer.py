"""A thin tokenizer over the `tokenizers` package, with the few conventions interpretability needs.

Loaders build a `tokenizers.Tokenizer` (from tokenizer.json, or rebuilt from GGUF metadata) and say
which ids are special. Whether a BOS token is prepended is the caller's choice; the default follows
TransformerLens (prepend when the model has one), because analyses treat BOS as the attention sink.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer as _RustTokenizer

from headscope.errors import InputError


@dataclass
class Tokenizer:
    """A `tokenizers` tokenizer with the special ids and BOS rule of its model."""

    backend: _RustTokenizer
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Encoders (BERT) add [CLS] ... [SEP] through the backend's post-processor; decoders prepend BOS here.
    uses_post_processor: bool = False

    @property
    def vocab_size(self) -> int:
        """The size of the vocabulary, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> list[int]:
        """Ids of special tokens (BOS, EOS, chat markers...), which random-token datasets leave out."""
        ids = {i for i, token in self.backend.get_added_tokens_decoder().items() if token.special}
        ids |= {i for i in (self.bos_token_id, self.eos_token_id, self.pad_token_id) if i is not None}
        return sorted(ids)

    def resolve_bos(self, prepend_bos: bool | None) -> bool:
        """Whether to prepend BOS: by default when the model has one and no post-processor frames the text."""
        if prepend_bos is None:
            return self.bos_token_id is not None and not self.uses_post_processor
        if prepend_bos and self.bos_token_id is None:
            raise InputError("prepend_bos=True but this tokenizer has no BOS token")
        return prepend_bos

    def encode(self, text: str, prepend_bos: bool | None = None) -> list[int]:
        """Token ids of one text. `prepend_bos=None` prepends BOS when the model has one."""
        if not isinstance(text, str):
            raise InputError(f"expected a string to tokenize, got {type(text).__name__}")
        encoding = self.backend.encode(text, add_special_tokens=self.uses_post_processor)
        self.check_known(text, encoding)
        ids = encoding.ids
        return [self.bos_token_id, *ids] if self.resolve_bos(prepend_bos) else ids

    def check_known(self, text: str, encoding) -> None:
        """Refuse a word outside the vocabulary when the backend would turn it into BOS, EOS or padding (the
        toy tokenizers' unknown token is `<bos>`): " Mary" silently becoming `<bos>` would make every
        unknown word the same token. A tokenizer with a real unknown token ([UNK]) keeps mapping to it."""
        unknown = getattr(self.backend.model, "unk_token", None)
        unknown_id = self.backend.token_to_id(unknown) if unknown else None
        if unknown_id is None or unknown_id not in (self.bos_token_id, self.eos_token_id, self.pad_token_id):
            return
        for token_id, (start, end) in zip(encoding.ids, encoding.offsets):
            if token_id == unknown_id and text[start:end] != unknown:
                raise InputError(f"{text[start:end]!r} is not in the tokenizer's vocabulary of {self.vocab_size} "
                                 f"tokens (e.g. {self._examples()}): it would be read as {unknown}")

    def _examples(self) -> str:
        words = sorted(self.backend.get_vocab(), key=self.backend.token_to_id)
        return ", ".join(repr(w) for w in words[:3])

    def batch(self, texts: list[str], prepend_bos: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded `[batch, pos]` ids and the attention mask (1 = real token)."""
        if not texts:
            raise InputError("no texts to tokenize")
        rows = [self.encode(t, prepend_bos) for t in texts]
        width = max(len(r) for r in rows)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """The text of token ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(ids, skip_special_tokens=False)

    def str_tokens(self, ids: list[int] | torch.Tensor) -> list[str]:
        """Each token decoded on its own, for axis labels and graph nodes."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return [self.backend.decode([i], skip_special_tokens=False) for i in ids]
