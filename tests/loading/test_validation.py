"""What a loaded model is checked for: floating-point, finite weights; configs of the right types; a known
device; words the tokenizer knows; BOS from config.json when a folder ships no tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import headscope
from headscope.capture.datasets import dataset_for_model, from_texts
from headscope.cli import cli
from headscope.errors import InputError, ModelFormatError

TOY = Path(headscope.__file__).parent / "data" / "toy-induction-2l"


@pytest.fixture
def toy_copy(tmp_path) -> Path:
    return Path(shutil.copytree(TOY, tmp_path / "toy"))


def _edit_weights(folder: Path, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors")


def _one_line_error(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_all_nan_weights_are_refused_naming_the_tensor(toy_copy):
    _edit_weights(toy_copy, lambda w: w.__setitem__("blocks.1.attn.W_Q", torch.full_like(w["blocks.1.attn.W_Q"], float("nan"))))
    with pytest.raises(ModelFormatError, match=r"^weight blocks\.1\.attn\.W_Q holds NaN or infinite values$"):
        headscope.load_model(toy_copy)
    assert "blocks.1.attn.W_Q holds NaN" in _one_line_error("classify", str(toy_copy))


def test_integer_weights_are_refused_naming_the_tensor(toy_copy):
    _edit_weights(toy_copy, lambda w: w.__setitem__("embed.W_E", w["embed.W_E"].to(torch.int32)))
    with pytest.raises(ModelFormatError, match=r"weight embed\.W_E \(torch\.int32\) is not floating point"):
        headscope.load_model(toy_copy)


@pytest.mark.parametrize("change, message", [
    ({"n_heads": 4.5}, "n_heads must be of type int, got 4.5"),
    ({"n_layers": None}, "n_layers must be of type int, got None"),
    ({"n_layers": "2"}, "n_layers must be of type int, got '2'"),
    ({"norm_eps": float("nan")}, "norm_eps must be of type finite float"),
    ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm, none"),
])
def test_config_values_of_the_wrong_type_are_one_line(toy_copy, change, message):
    config = json.loads((toy_copy / "config.json").read_text())
    (toy_copy / "config.json").write_text(json.dumps(config | change))
    assert message in _one_line_error("models", "info", str(toy_copy))


def test_a_config_json_that_is_a_list_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("[{}]")
    assert "config.json holds a JSON list, not an object of settings" in _one_line_error("models", "info", str(tmp_path))


def test_an_unknown_device_is_one_line():
    assert "unknown device 'tpu'" in _one_line_error("classify", "--device", "tpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        headscope.load_model("toy-induction-2l", device="tpu")


def test_the_toy_tokenizer_refuses_words_outside_its_vocabulary():
    model = headscope.load_model("toy-induction-2l")
    assert model.to_tokens("t3 <bos> t5").tolist() == [[64, 3, 64, 5]]  # <bos> typed on purpose is kept
    with pytest.raises(InputError, match=r"'Mary' is not in the tokenizer's vocabulary .* read as <bos>"):
        model.to_tokens("t1 Mary t2")
    with pytest.raises(InputError, match="'John' is not in"):
        from_texts(["t1 t2", "t3 John"], model.tokenizer)
    assert "'Mary' is not in" in _one_line_error("flow", "--text", "t1 Mary", "--out", "x.json")


def test_generated_prompts_take_bos_from_config_json_without_a_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                                     bos_token_id=7, eos_token_id=7)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    model = headscope.load_model(tmp_path)
    assert model.tokenizer is None
    data = dataset_for_model(model, "repeated-random", seq_len=8, num_prompts=3)
    assert data.has_bos and data.tokens[:, 0].tolist() == [7, 7, 7]
    assert 7 not in data.tokens[:, 1:].tolist()  # BOS is never drawn as a random token
