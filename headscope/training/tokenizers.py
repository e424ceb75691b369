"""The tokenizers of toy models: words `t0` ... `tN` for repeated-random training, bytes for text.

Built with the `tokenizers` library, as every other headscope tokenizer is, so checkpoints save them as
tokenizer.json and `Tokenizer` serves them like any model's.
"""

from __future__ import annotations

from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers

from headscope.model.tokenizer import Tokenizer


def toy_tokenizer(vocab: int) -> Tokenizer:
    """Words `t0` ... `t{vocab-1}` and `<bos>` (id `vocab`), split on whitespace: enough to type a prompt
    such as "t3 t17 t3" and for datasets to know the BOS id and the special tokens. There is no unknown
    token (its place is `<bos>`), so `Tokenizer.check_known` refuses any other word with an InputError."""
    words = {f"t{i}": i for i in range(vocab)} | {"<bos>": vocab}
    backend = RustTokenizer(models.WordLevel(words, unk_token="<bos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins the words back with spaces
    backend.add_special_tokens(["<bos>"])
    return Tokenizer(backend, bos_token_id=vocab)


def byte_tokenizer() -> Tokenizer:
    """Byte-level: id = byte value (GPT-2's byte-to-character map, no merges), `<bos>` = 256."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    ordered = sorted(alphabet, key=lambda ch: _BYTE_OF[ch])
    backend = RustTokenizer(models.BPE({ch: i for i, ch in enumerate(ordered)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<bos>"])
    return Tokenizer(backend, bos_token_id=256)


def _gpt2_byte_map() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (the map byte-level BPE tokenizers use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_OF = _gpt2_byte_map()
