"""The exceptions headscope users catch. Every message says what was wrong and what to do."""

from __future__ import annotations


class HeadscopeError(Exception):
    """Base class: the CLI turns any of these into one line and exit code 1.

    `parameter` names the API argument at fault (e.g. "seq_len"), so the command line can name its own
    option for it; the message itself speaks of values and limits, never of command-line flags.
    """

    def __init__(self, message: str = "", *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class ModelNotFoundError(HeadscopeError):
    """A model name that is not in the registry and not a path to a model file or folder."""


class ModelFormatError(HeadscopeError):
    """A model file or folder that cannot be read: truncated, missing weights, unexpected keys."""


class UnsupportedModelError(HeadscopeError):
    """A readable model whose architecture or settings headscope does not implement."""


class FetchError(HeadscopeError):
    """A packaged model could not be downloaded, or its checksum did not match."""


class InputError(HeadscopeError):
    """Bad input to a model: token ids out of range, a sequence too long, text without a tokenizer."""


class HookError(HeadscopeError):
    """An unknown hook name, or a hook filter that matches nothing."""
