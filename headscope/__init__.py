"""headscope: mechanistic interpretability of attention heads."""

from importlib.metadata import PackageNotFoundError, version

from headscope import capture  # a callable package: headscope.capture(model, dataset, ...)
from headscope.capture import CaptureResult, TokenDataset, load_patterns, repeated_random_tokens
from headscope.loading import LoadedModel
from headscope.loading.checkpoint import load_checkpoint, save_checkpoint
from headscope.loading.load import load_model, load_source
from headscope.loading.registry import fetch, list_models
from headscope.model.config import ModelConfig
from headscope.model.transformer import HookedTransformer

try:
    __version__ = version("headscope")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "CaptureResult", "HookedTransformer", "LoadedModel", "TokenDataset", "capture", "load_patterns",
    "repeated_random_tokens", "ModelConfig", "fetch", "list_models", "load_checkpoint", "load_model",
    "load_source", "save_checkpoint",
]
