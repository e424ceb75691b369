"""Forward-pass behaviour: return types, weight loading checks, and clear errors on bad input."""

import dataclasses

import pytest
import torch

from headscope.errors import InputError, ModelFormatError
from headscope.loading import LoadedModel
from headscope.model.config import ModelConfig
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS


@pytest.fixture
def gpt2():
    torch.manual_seed(0)
    return HookedTransformer(TINY_CONFIGS["gpt2"]).eval()


@torch.no_grad()
def test_loss_is_next_token_cross_entropy(gpt2):
    tokens = torch.randint(0, 99, (2, 10))
    logits = gpt2(tokens)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 99), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(gpt2(tokens, return_type="loss"), expected)


@torch.no_grad()
def test_state_dict_round_trip_gives_the_same_model(tiny_model):
    loaded = LoadedModel(tiny_model.cfg, dict(tiny_model.state_dict()))
    copy = HookedTransformer.from_loaded(loaded)
    tokens = torch.randint(0, 99, (2, 6))
    torch.testing.assert_close(copy(tokens, return_type="hidden"), tiny_model(tokens, return_type="hidden"))


def test_tied_embeddings_have_no_separate_unembedding(gpt2):
    assert "unembed.W_U" not in gpt2.state_dict()
    assert gpt2.W_U.data_ptr() == gpt2.embed.W_E.data_ptr()


def test_incomplete_or_extra_weights_are_refused(gpt2):
    state = dict(gpt2.state_dict())
    cfg = gpt2.cfg
    missing = {k: v for k, v in state.items() if k != "blocks.1.attn.W_Q"}
    with pytest.raises(ModelFormatError, match="missing weights for this config: blocks.1.attn.W_Q"):
        HookedTransformer.from_loaded(LoadedModel(cfg, missing))
    with pytest.raises(ModelFormatError, match="unexpected weights for this config: blocks.0.attn.W_X"):
        HookedTransformer.from_loaded(LoadedModel(cfg, {**state, "blocks.0.attn.W_X": torch.zeros(1)}))
    wrong = {**state, "embed.W_E": torch.zeros(98, 32)}
    with pytest.raises(ModelFormatError, match=r"wrong shapes for this config: embed.W_E: \(98, 32\)"):
        HookedTransformer.from_loaded(LoadedModel(cfg, wrong))


def test_token_ids_out_of_range_are_a_clear_error(gpt2):
    with pytest.raises(InputError, match="token id 99 is out of range for a vocabulary of 99"):
        gpt2(torch.tensor([[1, 99]]))
    with pytest.raises(InputError, match="token id -1 is out of range"):
        gpt2(torch.tensor([[-1, 3]]))


def test_sequence_longer_than_the_context_is_a_clear_error(gpt2):
    with pytest.raises(InputError, match="sequence of 65 tokens is longer than the model's context of 64"):
        gpt2(torch.zeros(1, 65, dtype=torch.long))


def test_text_without_a_tokenizer_and_float_tokens_are_clear_errors(gpt2):
    with pytest.raises(InputError, match="this model has no tokenizer"):
        gpt2("hello")
    with pytest.raises(InputError, match="tokens must be an integer tensor"):
        gpt2(torch.zeros(1, 3))


def test_an_encoder_returns_its_last_hidden_state_and_has_no_logits():
    model = HookedTransformer(TINY_CONFIGS["bert"])
    tokens = torch.zeros(1, 3, dtype=torch.long)
    assert model(tokens).shape == (1, 3, 32)
    with pytest.raises(InputError, match="no unembedding"):
        model(tokens, return_type="logits")


def test_config_checks_relations_between_fields():
    with pytest.raises(ValueError, match=r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"):
        dataclasses.replace(TINY_CONFIGS["llama-gqa"], n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown config fields: colour"):
        ModelConfig.from_dict({**TINY_CONFIGS["gpt2"].to_dict(), "colour": "red"})
    assert ModelConfig.from_dict(TINY_CONFIGS["bert"].to_dict()) == TINY_CONFIGS["bert"]


@torch.no_grad()
def test_running_from_a_cached_layer_equals_the_whole_forward(tiny_model):
    tokens = torch.randint(0, 99, (2, 9))
    _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_pre"))
    whole = tiny_model(tokens, return_type="hidden")
    for layer in range(tiny_model.cfg.n_layers):
        resumed = tiny_model.run_from_layer(cache[f"blocks.{layer}.hook_resid_pre"], layer, return_type="hidden")
        torch.testing.assert_close(resumed, whole, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="start_layer 5 is outside"):
        tiny_model.run_from_layer(whole, 5)
