"""Load Hugging Face GPT-2, Llama, BERT and GPT-NeoX models into headscope's weight layout.

Three doors, one path. A local folder (config.json, safetensors or `pytorch_model.bin`, tokenizer.json)
is read with json, safetensors and tokenizers alone; a `transformers` model object gives its config and
state dict; a hub name is downloaded with huggingface_hub and read as a folder. Then
`hf_architectures.py` maps the config and renames every weight.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer as RustTokenizer

from headscope.errors import FetchError, ModelFormatError, ModelNotFoundError, UnsupportedModelError
from headscope.loading import LoadedModel
from headscope.loading.hf_architectures import (
    architecture_class, convert_state_dict, family_and_head, listed, model_config,
)
from headscope.model.tokenizer import Tokenizer

Tensor = torch.Tensor

# Weight files in the order they are looked for; an index file names the shards of a split checkpoint.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
HUB_FILES = ("config.json", *TOKENIZER_FILES)


# ----- reading a folder ----------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} holds a JSON {type(data).__name__}, not an object of settings")
    return data


def _read_one(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ModelFormatError(f"{path} is not a readable weight file (truncated or another format): {err}") from err
    if not isinstance(weights, dict) or not all(isinstance(t, Tensor) for t in weights.values()):
        raise ModelFormatError(f"{path} does not hold a state dict (a dict of tensors)")
    return weights


def _read_sharded(index_path: Path) -> dict[str, Tensor]:
    """A split checkpoint: the index's `weight_map` names the shard of every weight."""
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ModelFormatError(f"{index_path} has no weight_map")
    weights: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (index_path.parent / shard).is_file():
            raise ModelFormatError(f"{index_path} names shard {shard}, which is not in the folder")
        weights |= _read_one(index_path.parent / shard)
    if set(weights) != set(weight_map):
        differ = sorted(set(weights) ^ set(weight_map))
        raise ModelFormatError(f"{index_path}: the shards do not hold the weights it lists: {listed(differ)}")
    return weights


def _read_weights(folder: Path) -> dict[str, Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return _read_sharded(path) if name.endswith(".index.json") else _read_one(path)
    raise ModelFormatError(f"{folder}: no weights found; looked for {', '.join(WEIGHT_FILES)}")


# ----- tokenizer -----------------------------------------------------------------------------------
def _token_name(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _special_id(backend: RustTokenizer, role: str, files: list[dict[str, Any]], hf: dict[str, Any]) -> int | None:
    """The id of the bos/eos/pad token named in the tokenizer files, else config.json's id if in the vocabulary."""
    for settings in files:
        name = _token_name(settings.get(f"{role}_token"))
        if name is not None and backend.token_to_id(name) is not None:
            return backend.token_to_id(name)
    token_id = hf.get(f"{role}_token_id")
    in_vocab = isinstance(token_id, int) and 0 <= token_id < backend.get_vocab_size(with_added_tokens=True)
    return token_id if in_vocab else None


def _wrap_backend(backend: RustTokenizer, ids: dict[str, int | None], encoder: bool, d_vocab: int,
                  source: str) -> Tokenizer:
    """Our batching pads and our models check lengths: switch off the padding and truncation that
    tokenizer.json may carry (all-MiniLM-L6-v2's pads and truncates to 128)."""
    backend.no_padding()
    backend.no_truncation()
    if backend.get_vocab_size(with_added_tokens=True) > d_vocab:
        raise ModelFormatError(f"{source}: the tokenizer has {backend.get_vocab_size(with_added_tokens=True)} "
                               f"tokens but the embedding only {d_vocab} rows")
    return Tokenizer(backend, bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                     uses_post_processor=encoder)


def _folder_tokenizer(folder: Path, hf: dict[str, Any], encoder: bool, d_vocab: int) -> Tokenizer | None:
    if not (folder / "tokenizer.json").is_file():
        return None
    try:
        backend = RustTokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as err:  # the Rust library raises plain Exception for a malformed file
        raise ModelFormatError(f"{folder / 'tokenizer.json'} is not a readable tokenizer: {err}") from err
    files = [_read_json(folder / name) for name in TOKENIZER_FILES[1:] if (folder / name).is_file()]
    ids = {role: _special_id(backend, role, files, hf) for role in ("bos", "eos", "pad")}
    return _wrap_backend(backend, ids, encoder, d_vocab, str(folder))


# ----- public loaders ------------------------------------------------------------------------------
def load_hf_folder(path: str | Path) -> LoadedModel:
    """Read a Hugging Face model folder without `transformers`: config, float32 weights, tokenizer (or None)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelNotFoundError(f"no model folder at {folder}")
    if not (folder / "config.json").is_file():
        raise ModelFormatError(f"{folder}: no config.json, so this is not a Hugging Face model folder")
    source = str(folder)
    hf = _read_json(folder / "config.json")
    class_name = architecture_class(hf, source)
    family, lm_head = family_and_head(hf, class_name, source)
    cfg = model_config(family, hf, lm_head, source)
    state_dict = convert_state_dict(_read_weights(folder), family, cfg, source)
    tokenizer = _folder_tokenizer(folder, hf, family.encoder, cfg.d_vocab)
    meta = {"hf_architecture": class_name}
    bos = hf.get("bos_token_id")
    if tokenizer is None and not family.encoder and isinstance(bos, int) and 0 <= bos < cfg.d_vocab:
        meta["bos_token_id"] = bos  # no tokenizer: generated prompts still start as the model was trained
    return LoadedModel(cfg, state_dict, tokenizer, source, meta=meta)


def load_hf_model(model: Any, tokenizer: Any = None, state_dict: dict[str, Tensor] | None = None) -> LoadedModel:
    """Convert a `transformers` model object (GPT2*, Llama*, Bert*, GPTNeoX*) and optionally its fast tokenizer.

    `state_dict` replaces `model.state_dict()` where the module tree was wrapped (a TransformerLens bridge).
    """
    class_name = type(model).__name__
    source = f"transformers {class_name}"
    hf = model.config.to_dict()
    family, lm_head = family_and_head(hf, class_name, source)
    cfg = model_config(family, hf, lm_head, source)
    # Copies, so that editing our weights (ablations) never edits the transformers model.
    state_dict = model.state_dict() if state_dict is None else state_dict
    weights = {key: tensor.detach().clone() for key, tensor in state_dict.items()}
    state_dict = convert_state_dict(weights, family, cfg, source)
    ours = None if tokenizer is None else _from_transformers_tokenizer(tokenizer, hf, family.encoder, cfg.d_vocab)
    return LoadedModel(cfg, state_dict, ours, source, meta={"hf_architecture": class_name})


def _from_transformers_tokenizer(tokenizer: Any, hf: dict[str, Any], encoder: bool, d_vocab: int) -> Tokenizer:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedModelError(f"{type(tokenizer).__name__} is a slow tokenizer; pass a fast one "
                                    "(AutoTokenizer.from_pretrained(..., use_fast=True))")
    backend = RustTokenizer.from_str(backend.to_str())  # a copy: switching off truncation must not touch theirs
    ids = {role: getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "pad")}
    return _wrap_backend(backend, ids, encoder, d_vocab, type(tokenizer).__name__)


def load_hf_hub(name: str, cache_dir: str | Path | None = None) -> LoadedModel:
    """Download `hf:<name>` (config, weights and tokenizer files only) with huggingface_hub and load it.

    `HF_HUB_OFFLINE=1` is honoured when this is called (huggingface_hub reads it only once, at import).
    """
    repo_id = name.removeprefix("hf:")
    folder = _download(repo_id, [*HUB_FILES, "model.safetensors", "model.safetensors.index.json",
                                 "model-*.safetensors"], cache_dir)
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        folder = _download(repo_id, [*HUB_FILES, "pytorch_model.bin", "pytorch_model.bin.index.json",
                                     "pytorch_model-*.bin"], cache_dir)
    loaded = load_hf_folder(folder)
    loaded.source = f"hf:{repo_id}"
    return loaded


def _download(repo_id: str, patterns: list[str], cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir,
                                      local_files_only=offline))
    except (HFValidationError, RepositoryNotFoundError) as err:
        raise ModelNotFoundError(f"hf:{repo_id} is not a model on the Hugging Face hub ({type(err).__name__})") from err
    except OSError as err:  # connection errors, offline mode without a cached copy, hub errors
        reason = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else str(err).splitlines()[0]
        raise FetchError(f"could not download hf:{repo_id} from the Hugging Face hub: {reason}. Connect to the "
                         "internet, or download the folder elsewhere and load it by path") from err
