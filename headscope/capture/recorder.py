"""Recorders: full attention patterns of chosen heads on chosen prompts, kept and written to one file.

Only the named heads' patterns are ever formed, from q, k and the row log-sum-exp of the fused call, so
recording one head of a long prompt costs one pos x pos matrix, not the layer's. The file is safetensors:
`pattern/L{l}H{h}/{prompt}` (query, key) float32 tensors and `tokens/{prompt}` ids, trimmed to the prompt's
real length; `headscope.load_patterns` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from headscope.errors import InputError
from headscope.heads import head_name
from headscope.io import atomic_path, strict_json
from headscope.notebook import html_table, short_repr


@dataclass
class PatternRecorder:
    """Collects the patterns of `heads` (layer, head) on the dataset's `prompts` as a capture runs."""

    heads: list[tuple[int, int]]
    prompts: list[int]
    patterns: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)

    def heads_in(self, layer: int) -> list[int]:
        """The recorded heads of one layer."""
        return [h for (l, h) in self.heads if l == layer]

    def wanted(self, start: int, stop: int) -> list[int]:
        """Rows of the batch [start, stop) whose prompts are recorded."""
        return [p - start for p in self.prompts if start <= p < stop]

    def add(self, layer: int, head: int, prompt: int, pattern: torch.Tensor, length: int) -> None:
        """Keep one head's (query, key) pattern of one prompt, trimmed to its `length` real tokens."""
        self.patterns[f"pattern/{head_name(layer, head)}/{prompt}"] = pattern[:length, :length].float().cpu()

    def add_tokens(self, prompt: int, tokens: torch.Tensor, length: int) -> None:
        """Keep a recorded prompt's token ids, trimmed to its real length."""
        self.tokens[prompt] = tokens[:length].cpu()

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Write every kept pattern and token list to one safetensors file (atomically)."""
        tensors = {k: v.contiguous() for k, v in self.patterns.items()}
        tensors |= {f"tokens/{p}": t.contiguous() for p, t in self.tokens.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"meta": strict_json(meta or {}, None)})

    def result(self, meta: dict) -> "Patterns":
        """What was recorded, keyed by (head name, prompt) as `load_patterns` returns it."""
        return Patterns({(key.split("/")[1], int(key.split("/")[2])): t for key, t in self.patterns.items()},
                        self.tokens, meta)


@dataclass
class Patterns:
    """Patterns read back: `patterns[("L5H1", prompt)]` (query, key), `tokens[prompt]`, and `meta`."""

    patterns: dict[tuple[str, int], torch.Tensor]
    tokens: dict[int, torch.Tensor]
    meta: dict

    @property
    def heads(self) -> list[str]:
        return list(dict.fromkeys(name for name, _ in self.patterns))

    @property
    def prompts(self) -> list[int]:
        return sorted({prompt for _, prompt in self.patterns})

    def __repr__(self) -> str:
        return short_repr(self, {"heads": self.heads, "prompts": self.prompts,
                                 "shapes": sorted({tuple(p.shape) for p in self.patterns.values()})})

    def _repr_html_(self) -> str:
        rows = [{"head": name, "prompt": prompt, "shape (query, key)": " x ".join(map(str, p.shape)),
                 "tokens": len(self.tokens.get(prompt, ()))} for (name, prompt), p in self.patterns.items()]
        return html_table(rows, caption=f"patterns of {len(self.heads)} heads on {len(self.prompts)} prompts")


def load_patterns(path: str | Path) -> Patterns:
    """The patterns a capture recorded (`patterns.safetensors`), as `Patterns`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no pattern file at {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise InputError(f"{path} is not a headscope pattern file: {err}") from err
    patterns = {}
    tokens = {}
    for key, value in tensors.items():
        kind, *rest = key.split("/")
        if kind == "pattern":
            patterns[(rest[0], int(rest[1]))] = value
        elif kind == "tokens":
            tokens[int(rest[0])] = value
    return Patterns(patterns, tokens, meta)
