"""headscope's own checkpoint: a folder with the config as JSON and the weights as safetensors.

Layout of a checkpoint folder:
- `config.json`: `ModelConfig.to_dict()` plus the keys in `_META_KEYS` (`"format": "headscope"` marks
  the folder as ours, `format_version` says which layout wrote it);
- `model.safetensors`: the state dict in the weight layout of docs/design.md;
- `tokenizer.json` and `tokenizer_meta.json` (BOS/EOS/PAD ids), only when the model has a tokenizer.

A folder is written beside its destination and renamed into place, so a failed save leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as RustTokenizer

from headscope.errors import InputError, ModelFormatError, ModelNotFoundError
from headscope.loading import LoadedModel
from headscope.model.config import ModelConfig
from headscope.model.tokenizer import Tokenizer

FORMAT = "headscope"
FORMAT_VERSION = 1
_META_KEYS = ("format", "format_version", "saved_from")
_TOKENIZER_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "uses_post_processor")


def is_checkpoint(folder: str | Path) -> bool:
    """True when `folder` holds a config.json marked `"format": "headscope"`."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def save_checkpoint(model, folder: str | Path) -> Path:
    """Write a `LoadedModel` or a `HookedTransformer` to `folder` as a headscope checkpoint.

    An existing headscope checkpoint at `folder` is replaced; any other existing, non-empty folder
    (or a file) is refused with InputError. Returns the folder.
    """
    config, state_dict, tokenizer, source = _parts(model)
    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and (is_checkpoint(folder) or not any(folder.iterdir()))):
        raise InputError(f"refusing to overwrite {folder}: it exists and is not a headscope checkpoint; "
                         "choose a new folder or remove it")
    parent = folder.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {folder}: folder {parent} does not exist")
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    try:
        _write(staged, config, state_dict, tokenizer, source)
        _replace_folder(staged, folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return folder


def load_checkpoint(folder: str | Path) -> LoadedModel:
    """Read a folder written by `save_checkpoint`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"no checkpoint folder at {folder}")
    if not is_checkpoint(folder):
        raise ModelFormatError(f"{folder} is not a headscope checkpoint: it needs a config.json with "
                               f'"format": "{FORMAT}" (written by headscope.save_checkpoint)')
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"{folder} is a headscope checkpoint of format version {version}; this "
                               f"headscope reads version {FORMAT_VERSION}: upgrade headscope")
    meta = {key: data.pop(key) for key in _META_KEYS if key in data}
    try:
        config = ModelConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ModelFormatError(f"{folder / 'config.json'}: {err}") from err
    try:
        state_dict = load_file(folder / "model.safetensors")
    except (OSError, SafetensorError) as err:
        raise ModelFormatError(f"cannot read {folder / 'model.safetensors'}: {err}") from err
    return LoadedModel(config, state_dict, _load_tokenizer(folder), source=str(folder), meta=meta)


def _parts(model) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None, str]:
    """Config, weights, tokenizer and source of a LoadedModel or a HookedTransformer."""
    if isinstance(model, LoadedModel):
        return model.config, model.state_dict, model.tokenizer, model.source
    if isinstance(model, torch.nn.Module) and isinstance(getattr(model, "cfg", None), ModelConfig):
        weights = dict(model.named_parameters())  # exactly what HookedTransformer.load_weights accepts
        return model.cfg, weights, getattr(model, "tokenizer", None), getattr(model, "source", "")
    raise InputError(f"save_checkpoint needs a LoadedModel or a HookedTransformer, got {type(model).__name__}")


def _write(folder: Path, config: ModelConfig, state_dict: dict[str, torch.Tensor],
           tokenizer: Tokenizer | None, source: str) -> None:
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "saved_from": source, **config.to_dict()}
    (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    # safetensors refuses tensors that share memory (tied or sliced weights): save independent copies.
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state_dict.items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.backend.save(str(folder / "tokenizer.json"))
        meta = {field: getattr(tokenizer, field) for field in _TOKENIZER_FIELDS}
        (folder / "tokenizer_meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _load_tokenizer(folder: Path) -> Tokenizer | None:
    if not (folder / "tokenizer.json").is_file():
        return None
    try:
        backend = RustTokenizer.from_file(str(folder / "tokenizer.json"))
        meta = json.loads((folder / "tokenizer_meta.json").read_text(encoding="utf-8"))
    except Exception as err:  # tokenizers raises a bare Exception for a malformed tokenizer.json
        raise ModelFormatError(f"cannot read the tokenizer in {folder}: {err}") from err
    unknown = sorted(set(meta) - set(_TOKENIZER_FIELDS))
    if unknown:
        raise ModelFormatError(f"{folder / 'tokenizer_meta.json'}: unknown fields {', '.join(unknown)}")
    return Tokenizer(backend, **meta)


def _replace_folder(staged: Path, folder: Path) -> None:
    """Rename `staged` to `folder`; an old checkpoint there is moved aside first, then deleted."""
    if not folder.exists():
        os.replace(staged, folder)
        return
    if not any(folder.iterdir()):
        folder.rmdir()
        os.replace(staged, folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    os.replace(folder, aside / folder.name)
    os.replace(staged, folder)
    shutil.rmtree(aside, ignore_errors=True)
