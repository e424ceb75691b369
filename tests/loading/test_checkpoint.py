"""headscope checkpoints: save -> load round trips for every architecture, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from headscope.errors import InputError, ModelFormatError, ModelNotFoundError
from headscope.loading import LoadedModel
from headscope.loading.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from headscope.loading.load import load_model
from headscope.model.config import ModelConfig
from headscope.model.tokenizer import Tokenizer
from headscope.model.transformer import HookedTransformer


def _tiny_tokenizer(vocab_size: int = 99) -> Tokenizer:
    vocab = {"<bos>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    backend = RustTokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return Tokenizer(backend, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def test_round_trip_keeps_weights_and_outputs(tiny_model, tmp_path):
    folder = save_checkpoint(tiny_model, tmp_path / "ckpt")
    assert is_checkpoint(folder)
    loaded = load_checkpoint(folder)
    assert loaded.config == tiny_model.cfg
    expected = dict(tiny_model.named_parameters())
    assert loaded.state_dict.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded.state_dict[name], tensor.detach()), name
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(1))
    rebuilt = HookedTransformer.from_loaded(loaded)
    assert torch.equal(rebuilt(tokens), tiny_model(tokens))


def test_round_trip_keeps_tokenizer_and_source(tiny_model, tmp_path):
    tiny_model.tokenizer = _tiny_tokenizer(tiny_model.cfg.d_vocab)
    tiny_model.source = "unit-test"
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt")  # the dispatcher recognises our folder
    assert model.source == str(tmp_path / "ckpt")
    assert load_checkpoint(tmp_path / "ckpt").meta["saved_from"] == "unit-test"
    tok = model.tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 1)
    assert model.to_tokens("w5 w7 nope").tolist() == [[0, 5, 7, 2]]


def test_shared_tensors_are_saved_as_copies(tmp_path):
    """safetensors refuses tensors that share memory (tied or sliced weights); we save copies."""
    torch.manual_seed(0)
    model = HookedTransformer(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_head=8, d_vocab=11, n_ctx=8,
                                          norm="none", final_norm=False))
    weights = {name: p.detach() for name, p in model.named_parameters()}
    fused = torch.randn(2, 16, 16)  # one buffer, three views, as a fused-QKV loader might produce
    weights["blocks.0.attn.W_Q"], weights["blocks.0.attn.W_K"] = fused[..., :8], fused[..., 8:]
    weights["blocks.0.attn.W_V"] = weights["blocks.0.attn.W_K"]
    save_checkpoint(LoadedModel(model.cfg, weights), tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.state_dict["blocks.0.attn.W_V"], fused[..., 8:])
    assert torch.equal(loaded.state_dict["blocks.0.attn.W_Q"], fused[..., :8])


def test_saving_over_a_checkpoint_replaces_it(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    with torch.no_grad():
        tiny_model.embed.W_E.add_(1.0)
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "ckpt").state_dict["embed.W_E"], tiny_model.embed.W_E.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folders left behind


def test_refuses_to_overwrite_what_is_not_a_checkpoint(tiny_model, tmp_path):
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing to overwrite .*results.*not a headscope checkpoint"):
        save_checkpoint(tiny_model, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="refusing to overwrite"):
        save_checkpoint(tiny_model, tmp_path / "file")
    with pytest.raises(InputError, match="does not exist"):
        save_checkpoint(tiny_model, tmp_path / "missing" / "ckpt")
    (tmp_path / "empty").mkdir()
    assert is_checkpoint(save_checkpoint(tiny_model, tmp_path / "empty"))


def test_a_folder_that_is_not_ours_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    assert not is_checkpoint(tmp_path)
    with pytest.raises(ModelFormatError, match='not a headscope checkpoint.*"format": "headscope"'):
        load_checkpoint(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no checkpoint folder"):
        load_checkpoint(tmp_path / "nothing")


def test_damaged_checkpoints_are_format_errors(tiny_model, tmp_path):
    folder = save_checkpoint(tiny_model, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ModelFormatError, match="format version 99"):
        load_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({**config, "d_modle": 3}))
    with pytest.raises(ModelFormatError, match="unknown config fields: d_modle"):
        load_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelFormatError, match="cannot read .*model.safetensors"):
        load_checkpoint(folder)
