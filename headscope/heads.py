"""Head names: `L{layer}H{head}` in tables, graphs and command lines."""

from __future__ import annotations

import re

from headscope.errors import InputError

_HEAD = re.compile(r"L(\d+)H(\d+)")


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def parse_heads(spec: str | list[str] | tuple[str, ...], n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """`"L1H6,L0H3"` or `["L1H6", "L0H3"]` -> [(1, 6), (0, 3)], checked against the model's shape."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    heads = []
    for name in names:
        match = _HEAD.fullmatch(name)
        if not match:
            raise InputError(f"bad head name {name!r}: use L<layer>H<head>, e.g. L1H6")
        layer, head = int(match[1]), int(match[2])
        if layer >= n_layers or head >= n_heads:
            raise InputError(f"head {name} does not exist: the model has {n_layers} layers x {n_heads} heads")
        heads.append((layer, head))
    if not heads:
        raise InputError("no heads named")
    return list(dict.fromkeys(heads))
