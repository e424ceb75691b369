"""What every output records about how it was made: the model's source and sha256, the headscope version and
the command, so that a result can be traced to the exact weights that produced it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import headscope


def command_line() -> str:
    """The command that is running, as a shell would take it (`headscope classify ...` for the CLI)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "headscope"):
        program = "headscope"
    return shlex.join([program, *sys.argv[1:]])


def provenance(model) -> dict[str, str | None]:
    """{"model_source", "model_sha256" (its file or folder; None for an object loaded from memory),
    "weights_sha256" (the loaded tensors), "headscope_version", "command"}: the keys every output's meta holds."""
    return {"model_source": model.name,
            "model_sha256": getattr(model, "source_sha256", None),
            "weights_sha256": model.weights_digest(),
            "headscope_version": headscope.__version__,
            "command": command_line()}


def graph_provenance(model) -> dict[str, str]:
    """`provenance` as graph attributes: strings only (GraphML and GEXF hold no null), "" for unknown."""
    return {key: "" if value is None else str(value) for key, value in provenance(model).items()}
