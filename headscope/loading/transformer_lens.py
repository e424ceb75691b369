"""TransformerLens interop: a `TransformerBridge` in, our model out; and a bridge booted with no hub.

TransformerLens 4 has no HookedTransformer of its own: its `TransformerBridge` wraps a `transformers`
model. So loading a bridge is loading the model it wraps, and our hook names are TransformerLens' names
(docs/transformer_lens.md lists the ones each side lacks), so caches compare key for key.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from headscope.errors import ModelFormatError
from headscope.loading import LoadedModel
from headscope.model.tokenizer import Tokenizer


def load_bridge(bridge: Any) -> LoadedModel:
    """Our config, weights and tokenizer from the `transformers` model and tokenizer a bridge wraps."""
    from headscope.loading.hf import load_hf_model

    model = bridge.original_model
    loaded = load_hf_model(model, bridge.tokenizer, state_dict=_unwrapped_state_dict(model))
    loaded.source = f"transformer_lens:{getattr(bridge.cfg, 'model_name', '')}"
    return loaded


def _unwrapped_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The wrapped model's own weights under their `transformers` names.

    Booting a bridge wraps the model's modules in place (`layer._original_component`) and adds split
    copies of fused weights (GPT-2's c_attn as q, k, v). The names a fresh model of the same class has,
    built on the meta device so nothing is allocated, say which keys are the model's own.
    """
    with torch.device("meta"):
        own_names = set(type(model)(model.config).state_dict())
    unwrapped = {key.replace("._original_component", ""): t for key, t in model.state_dict().items()}
    missing = sorted(own_names - set(unwrapped))
    if missing:
        raise ModelFormatError(f"the bridge's model lacks weights {', '.join(missing[:3])}: "
                               "is it a TransformerLens bridge around a transformers model?")
    return {name: unwrapped[name] for name in own_names}


def boot_bridge(hf_model: Any, tokenizer: Tokenizer | Any, name: str = "local-model") -> Any:
    """A `TransformerBridge` around a local `transformers` model, without a model hub.

    The bridge re-reads its tokenizer by name unless it is already set to add BOS, so the tokenizer is
    saved to a temporary folder and loaded from there. `tokenizer` is ours or a transformers one.
    The bridge's config may keep the default RoPE base even though the wrapped model uses its own
    (NOTES.md); it is set from the model's config so that what the bridge reports is true.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    hf_tokenizer = _as_transformers_tokenizer(tokenizer) if isinstance(tokenizer, Tokenizer) else tokenizer
    with tempfile.TemporaryDirectory() as folder:  # the bridge reads it again while booting
        hf_tokenizer.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model,
                                                     tokenizer=AutoTokenizer.from_pretrained(folder))
    rope_theta = _rope_theta(hf_model.config)
    if rope_theta is not None and hasattr(bridge.cfg, "rotary_base"):
        bridge.cfg.rotary_base = rope_theta
    return bridge


def _as_transformers_tokenizer(tokenizer: Tokenizer) -> Any:
    from transformers import PreTrainedTokenizerFast

    def token(token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.backend.id_to_token(token_id)

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend, bos_token=token(tokenizer.bos_token_id),
        eos_token=token(tokenizer.eos_token_id), pad_token=token(tokenizer.pad_token_id),
    )


def _rope_theta(config: Any) -> float | None:
    parameters = getattr(config, "rope_parameters", None) or {}
    return parameters.get("rope_theta", getattr(config, "rope_theta", None))
