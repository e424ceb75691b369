"""Head names: `L{layer}H{head}` in tables, graphs, JSON and command lines."""

from __future__ import annotations

import re

from headscope.errors import InputError

_HEAD = re.compile(r"L(\d+)H(\d+)")


def head_name(layer: int, head: int) -> str:
    """(1, 6) -> "L1H6"."""
    return f"L{layer}H{head}"


def parse_head(name: str) -> tuple[int, int]:
    """"L1H6" -> (1, 6), without checking it against a model (see `parse_heads` for that)."""
    match = _HEAD.fullmatch(name.strip())
    if not match:
        raise InputError(f"bad head name {name!r}: use L<layer>H<head>, e.g. L1H6")
    return int(match[1]), int(match[2])


def parse_heads(spec: str | list[str] | tuple[str, ...], n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """`"L1H6,L0H3"` or `["L1H6", "L0H3"]` -> [(1, 6), (0, 3)], checked against the model's shape; duplicates
    are dropped, empty names refused."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    heads = []
    for name in names:
        layer, head = parse_head(name)
        if layer >= n_layers or head >= n_heads:
            raise InputError(f"head {name.strip()} does not exist: the model has {n_layers} layers x {n_heads} heads")
        heads.append((layer, head))
    if not heads:
        raise InputError("no heads named")
    return list(dict.fromkeys(heads))
