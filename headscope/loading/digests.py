"""sha256 digests of model files, computed once and remembered while the file is unchanged.

Hashing a 100 MB model takes a fraction of a second, but it would on every load: a digest is kept in a
small JSON sidecar under the cache folder (`sha256/`, one file per absolute path) together with the file's
size and modification time, and computed again only when either changed. A folder's digest is the sha256
of its files' names and digests (hidden files left out), so it changes when any file of it does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from headscope.errors import HeadscopeError
from headscope.io import write_text_atomically


def sha256_of_file(path: str | Path) -> str:
    """sha256 of the file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a file, from its sidecar when size and modification time are those it was computed for."""
    path = Path(path).resolve()
    stat = path.stat()
    key = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = _sidecar(path, cache_dir)
    try:
        known = json.loads(sidecar.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in key} == key and isinstance(known.get("sha256"), str):
            return known["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_of_file(path)
    remember(path, digest, cache_dir)
    return digest


def remember(path: str | Path, digest: str, cache_dir: str | Path | None = None) -> None:
    """Record a digest just computed (e.g. while verifying a download) so the next load need not hash."""
    path = Path(path).resolve()
    stat = path.stat()
    sidecar = _sidecar(path, cache_dir)
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(sidecar, json.dumps({"path": str(path), "size": stat.st_size,
                                                   "mtime_ns": stat.st_mtime_ns, "sha256": digest}))
    except (OSError, HeadscopeError):  # a read-only cache only costs hashing again next time
        pass


def source_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """A file's sha256, or for a folder the sha256 of its files' `name  sha256` lines, sorted."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path, cache_dir)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts))
    lines = "".join(f"{p.relative_to(path).as_posix()}  {file_sha256(p, cache_dir)}\n" for p in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _sidecar(path: Path, cache_dir: str | Path | None) -> Path:
    from headscope.loading.registry import cache_root

    name = hashlib.sha256(os.fsencode(path)).hexdigest()[:32]
    return cache_root(cache_dir) / "sha256" / f"{name}.json"
