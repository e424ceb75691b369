"""Hook points: identity modules with TransformerLens names, and the machinery to attach hooks safely.

A hook function has TransformerLens' signature `fn(tensor, hook) -> tensor | None`; returning a tensor
replaces the activation. Temporary hooks are only ever attached inside `HookedModule.hooks(...)`, which
removes them in `finally`, so an exception in a hook or a forward pass never leaves one behind.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Union

import torch
from torch import nn

from headscope.errors import HookError

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]


class HookPoint(nn.Module):
    """An identity on the forward pass that hooks can read or replace; `name` is set by the root model."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""

    @property
    def active(self) -> bool:
        """True while a hook is attached; lets costly activations (patterns, per-head results) be skipped."""
        return bool(self._forward_hooks)

    def add_hook(self, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
        """Attach `fn(tensor, hook)` until the returned handle is removed."""
        def call(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            return fn(output, self)

        return self.register_forward_hook(call)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The identity: hooks read or replace what passes."""
        return x


class HookedModule(nn.Module):
    """A root module that names its hook points and attaches hooks by name or filter."""

    def setup_hooks(self) -> None:
        """Name every HookPoint after its module path; call once at the end of `__init__`."""
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def hook_names(self) -> list[str]:
        """Every hook point's name, in module order."""
        return list(self.hook_dict)

    def select_hooks(self, names: NameFilter) -> list[str]:
        """Hook names matched by a name, a list of names, a predicate, or None (all)."""
        if names is None:
            return self.hook_names()
        if callable(names):
            return [n for n in self.hook_dict if names(n)]
        wanted = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in wanted if n not in self.hook_dict]
        if unknown:
            raise HookError(
                f"unknown hook name {unknown[0]!r}; see `headscope models info` for this model's hook names"
            )
        return wanted

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()) -> Iterator[None]:
        """Attach `(name_or_filter, fn)` hooks for the duration of the block; always removes them."""
        handles = []
        try:
            for names, fn in fwd_hooks:
                for name in self.select_hooks(names):
                    handles.append(self.hook_dict[name].add_hook(fn))
            yield
        finally:
            for handle in handles:
                handle.remove()
