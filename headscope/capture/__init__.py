"""Attention capture: per-head statistics and patterns of chosen heads, streamed over whole datasets.

The package is itself callable, `headscope.capture(model, dataset, ...)` being `engine.capture`, so the
API reads as the issue asks while `headscope.capture.datasets` and friends stay importable: binding a
function to the name `headscope.capture` would hide the subpackage.
"""

import sys
import types

from headscope.capture.datasets import TokenDataset, from_file, from_tensor, from_texts, load_dataset, repeated_random_tokens
from headscope.capture.engine import capture
from headscope.capture.recorder import Patterns, load_patterns
from headscope.capture.result import CaptureResult
from headscope.capture.statistics import STATISTICS

__all__ = [
    "STATISTICS", "CaptureResult", "Patterns", "TokenDataset", "capture", "from_file", "from_tensor", "from_texts",
    "load_dataset", "load_patterns", "repeated_random_tokens",
]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs) -> CaptureResult:
        return capture(*args, **kwargs)

    __call__.__doc__ = capture.__doc__


sys.modules[__name__].__class__ = _CallablePackage
