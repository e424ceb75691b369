"""Progress files: the partial results of a long run, so that a rerun continues instead of starting over.

A progress file is safetensors (tensors plus a JSON header), written atomically, and stamped with the
fingerprint of the run it belongs to (model, exact inputs, options): a rerun with anything different is
refused rather than silently mixed in. Capture keeps partial per-prompt sums in one; ablation sweeps keep
the per-prompt values of the variants done so far.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from headscope import distributed
from headscope.errors import InputError
from headscope.io import atomic_path

Saved = tuple[dict[str, torch.Tensor], dict]  # tensors, and JSON-able facts about them


class ProgressFile:
    """Partial results at `path` (None: nothing is kept), saved at most every `every_s` seconds.

    keep_finished: also save when the work is done, and keep the file until `remove`: what a rank of a
    multi-process run, or a stage of a run of several, does while the rest is not finished yet.
    """

    def __init__(self, path: str | Path | None, fingerprint: str, every_s: float = 30.0,
                 keep_finished: bool = False) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None and not self.path.parent.is_dir():
            raise InputError(f"cannot keep progress in {self.path}: folder {self.path.parent} does not exist")
        self.fingerprint = fingerprint
        self.every_s = every_s
        self.keep_finished = keep_finished
        self.last_save = time.monotonic()

    def load(self) -> Saved | None:
        """What a previous run saved here, or None; a file of another run is an InputError."""
        if self.path is None or not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), "pt") as f:
                header = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
            fingerprint, facts = header["fingerprint"], json.loads(header["facts"])
        except Exception as err:  # safetensors and json raise their own types for a damaged file
            raise InputError(f"{self.path} is not a headscope progress file: {err}") from err
        if fingerprint != self.fingerprint:
            raise InputError(f"{self.path} holds the progress of another run (model, inputs or options): "
                             "delete it or choose another place to resume from")
        return tensors, facts

    def save(self, build: Callable[[], Saved], final: bool = False) -> None:
        """Save what `build()` returns if it is time to (it is called only then)."""
        if self.path is None:
            return
        if final and not self.keep_finished or not final and time.monotonic() - self.last_save < self.every_s:
            return
        tensors, facts = build()
        with atomic_path(self.path) as tmp:
            save_file({k: t.contiguous().cpu() for k, t in tensors.items()}, tmp,
                      metadata={"fingerprint": self.fingerprint, "facts": json.dumps(facts)})
        self.last_save = time.monotonic()

    def remove(self) -> None:
        """Delete the progress file (a finished run needs it no more)."""
        if self.path is not None and self.path.exists():
            self.path.unlink()


def run_fingerprint(model, dataset, **options) -> str:
    """What a progress file must match to be continued: the model (its source, config and a digest of its
    weights), the exact prompts, the run's options."""
    return json.dumps({"model": getattr(model, "source", ""), "config": model.cfg.to_dict(),
                       "weights": model.weights_digest(), "dataset": dataset.digest(), **options}, sort_keys=True)


def rank_path(path: str | Path | None, split: bool) -> Path | None:
    """This process's own progress file when the work is `split` across processes: progress.safetensors ->
    progress.rank1of4.safetensors (a run with another process count starts afresh)."""
    if path is None:
        return None
    path = Path(path)
    if not split:
        return path
    return path.with_name(f"{path.stem}.rank{distributed.rank()}of{distributed.world_size()}{path.suffix}")


def discard(path: str | Path | None, split: bool) -> None:
    """Remove this process's progress file of a finished run (see `rank_path`)."""
    ProgressFile(rank_path(path, split), "").remove()
