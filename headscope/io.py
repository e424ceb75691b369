"""Writing files so that a failure never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from headscope.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on failure deleted."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from err
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp makes 0600 files, and writers that replace the file (safetensors) make their own: every
        # output gets the usual permissions (0644 under the common umask 022)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write `text` to `path` as UTF-8 through a temporary file, so no half file is ever left."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output file that could not be written: its folder missing or read-only,
    or the path itself a folder."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: folder {folder} is not writable")


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold `folder/.headscope.lock` (an exclusive `flock`, with our pid inside) for a run writing into the
    folder; another process holding it is refused with its pid. The kernel drops the lock when its process
    ends, however it ends, so a killed run never leaves a stale lock."""
    import fcntl

    path = Path(folder) / ".headscope.lock"
    try:
        handle = open(path, "a+", encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot lock {folder}: {err.strerror}") from err
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise InputError(f"{folder} is in use by another headscope run (pid {owner}): wait for it to finish "
                             "or write elsewhere") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def strict_json(data: Any, indent: int | None = 2) -> str:
    """JSON text that every parser reads: NaN and infinities become null (never the bare `NaN` Python's
    json writes by default), and anything else json cannot hold is an error, not a silent string."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
