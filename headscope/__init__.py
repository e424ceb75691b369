"""headscope: mechanistic interpretability of attention heads."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("headscope")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
