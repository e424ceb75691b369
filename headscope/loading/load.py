"""`load_model`: one entry point that recognises a model source and hands it to the right loader.

Loaders are imported only when their source turns up, so a missing optional dependency
(`transformers`, `transformer_lens`) fails only for the sources that need it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch

from headscope.errors import HeadscopeError, ModelNotFoundError
from headscope.loading import LoadedModel, digests, registry

# Optional packages a loader may need, and the extra that installs them.
_OPTIONAL = {"transformers": "hf", "accelerate": "hf", "huggingface_hub": "hf", "transformer_lens": "tl"}


def load_model(source: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a model from any source `load_source` accepts, as a `HookedTransformer` on `device`."""
    from headscope.model.transformer import HookedTransformer

    return HookedTransformer.from_loaded(load_source(source), device=device, dtype=dtype)


def load_source(source: Any) -> LoadedModel:
    """Read a model's config, weights and tokenizer from `source`.

    `source` is one of: a registry name (`smollm2-135m`, `minilm-l6`; fetched into the cache if
    needed); a path to a `.gguf` file; a headscope checkpoint folder; a Hugging Face folder with a
    config.json; `"hf:<name>"` for a model on the Hugging Face Hub; a `transformers` PreTrainedModel;
    a TransformerLens `TransformerBridge`; or a `LoadedModel`, returned as is.
    """
    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _load_named(source)
    bridge = _class_in("transformer_lens.model_bridge", "TransformerBridge")
    if bridge is not None and isinstance(source, bridge):
        return _call("transformer_lens", "load_bridge", source)
    pretrained = _class_in("transformers", "PreTrainedModel")
    if pretrained is not None and isinstance(source, pretrained):
        return _call("hf", "load_hf_model", source)
    raise ModelNotFoundError(f"cannot load a model from a {type(source).__name__}: pass a registry name, a path, "
                             "'hf:<name>', a transformers PreTrainedModel or a TransformerLens TransformerBridge")


def _load_named(source: str | os.PathLike) -> LoadedModel:
    text = os.fspath(source)
    if isinstance(source, str) and text.startswith("hf:"):
        return _call("hf", "load_hf_hub", text[len("hf:"):])
    if isinstance(source, str) and text in registry.REGISTRY:
        entry = registry.REGISTRY[text]
        path = registry.fetch(entry)
        loaded = _load_path(path, entry.format)
        loaded.source = entry.name
        loaded.meta["sha256"] = registry.model_sha256(entry)
        return loaded
    path = Path(text).expanduser()
    if path.exists():
        loaded = _load_path(path, None)
        loaded.meta["sha256"] = digests.source_sha256(path)
        return loaded
    if _looks_like_path(source, text):
        raise ModelNotFoundError(f"no such file or folder: {text}")
    raise ModelNotFoundError(f"unknown model {text!r}: not a registered name ({', '.join(registry.REGISTRY)}) "
                             "nor a path to a .gguf file or a model folder")


def _load_path(path: Path, fmt: str | None) -> LoadedModel:
    """Dispatch an existing path by the registry's format, or by what is on disk when `fmt` is None."""
    from headscope.loading.checkpoint import is_checkpoint, load_checkpoint

    if fmt == "gguf" or (fmt is None and path.is_file() and path.suffix.lower() == ".gguf"):
        return _call("gguf", "load_gguf", path)
    if fmt == "headscope" or (fmt is None and path.is_dir() and is_checkpoint(path)):
        return load_checkpoint(path)
    if fmt == "hf" or (fmt is None and path.is_dir() and (path / "config.json").is_file()):
        return _call("hf", "load_hf_folder", path)
    what = "folder has no config.json" if path.is_dir() else "file is not a .gguf file"
    raise ModelNotFoundError(f"cannot load {path}: the {what}; pass a .gguf file, a headscope checkpoint "
                             "folder or a Hugging Face model folder")


def _looks_like_path(source: str | os.PathLike, text: str) -> bool:
    return (not isinstance(source, str) or os.sep in text or "/" in text or text.startswith(("~", "."))
            or text.lower().endswith(".gguf"))


def _class_in(module: str, name: str) -> type | None:
    """A class from a module only if that module is already imported: an object of it cannot exist otherwise."""
    return getattr(sys.modules.get(module), name, None)


def _call(module: str, function: str, *args: Any) -> LoadedModel:
    """Import `headscope.loading.<module>` now and call one of its loaders."""
    try:
        return getattr(importlib.import_module(f"headscope.loading.{module}"), function)(*args)
    except ModuleNotFoundError as err:
        root = (err.name or "").split(".")[0]
        if root not in _OPTIONAL:
            raise
        raise HeadscopeError(f"this model source needs the {root} package: pip install "
                             f"'headscope[{_OPTIONAL[root]}]'") from err
