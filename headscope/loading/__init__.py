"""Loaders: each source (GGUF, Hugging Face, TransformerLens, our checkpoints) becomes a `LoadedModel`.

A loader never builds modules; `HookedTransformer.from_loaded` does. The weight names and shapes a
loader must produce are tabled in docs/design.md ("The weight layout").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from headscope.model.config import ModelConfig
from headscope.model.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    """What every loader returns: the config, weights in headscope's layout, the tokenizer and the source."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer | None = None
    source: str = ""  # where it came from, for reports
    meta: dict = field(default_factory=dict)
