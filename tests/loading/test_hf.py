"""The Hugging Face loader against `transformers` itself: tiny seeded models of each family, saved as
folders and passed as objects, give the same logits (or BERT's last hidden state); the real
all-MiniLM-L6-v2 folder does too; and every malformed or unsupported input is a specific headscope error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as RustTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from headscope.errors import FetchError, ModelFormatError, ModelNotFoundError, UnsupportedModelError
from headscope.loading.hf import load_hf_folder, load_hf_hub, load_hf_model
from headscope.model.transformer import HookedTransformer

TOL = 1e-5
VOCAB = 99


def _gpt2():
    return transformers.GPT2LMHeadModel, transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)


def _llama_gqa():
    return transformers.LlamaForCausalLM, transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=2, max_position_embeddings=64, rope_theta=500.0)


def _llama_mha_tied():
    return transformers.LlamaForCausalLM, transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
        max_position_embeddings=64, tie_word_embeddings=True)


def _bert():
    return transformers.BertModel, transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37,
        type_vocab_size=2, max_position_embeddings=64)


def _bert_mlm():
    return transformers.BertForMaskedLM, _bert()[1]


def _neox(parallel: bool):
    return lambda: (transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
        max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=parallel))


CASES = {
    "gpt2": _gpt2,
    "llama-gqa": _llama_gqa,
    "llama-mha-tied": _llama_mha_tied,
    "bert": _bert,
    "bert-mlm": _bert_mlm,
    "neox-parallel": _neox(parallel=True),
    "neox-sequential": _neox(parallel=False),
}


def _build(case: str) -> transformers.PreTrainedModel:
    """A seeded random model with non-zero biases and non-unit norm weights, so every weight matters."""
    torch.manual_seed(0)
    cls, config = CASES[case]()
    model = cls(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory) -> tuple[str, transformers.PreTrainedModel, Path]:
    model = _build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, model, folder


def _max_diff(case: str, hf_model, loaded) -> float:
    """Largest |ours - transformers| over real positions: logits, or the last hidden state of BERT."""
    ours = HookedTransformer.from_loaded(loaded)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (3, 12), generator=generator)
    with torch.no_grad():
        if not loaded.config.has_unembed:
            mask = torch.ones_like(tokens)
            mask[1, 8:] = 0
            mask[2, 3:] = 0
            types = torch.randint(0, 2, tokens.shape, generator=generator)
            encoder = hf_model.bert if case == "bert-mlm" else hf_model
            ref = encoder(tokens, attention_mask=mask, token_type_ids=types).last_hidden_state
            out = ours(tokens, attention_mask=mask, token_type_ids=types, return_type="hidden")
            return float((ref - out)[mask.bool()].abs().max())
        ref = hf_model(tokens).logits
        return float((ref - ours(tokens, return_type="logits")).abs().max())


def test_folder_matches_transformers(saved):
    case, hf_model, folder = saved
    loaded = load_hf_folder(folder)
    assert loaded.tokenizer is None  # no tokenizer.json in the folder
    assert _max_diff(case, hf_model, loaded) <= TOL


def test_model_object_matches_transformers_and_folder(saved):
    case, hf_model, folder = saved
    loaded = load_hf_model(hf_model)
    assert _max_diff(case, hf_model, loaded) <= TOL
    from_folder = load_hf_folder(folder)
    assert loaded.config == from_folder.config
    assert loaded.state_dict.keys() == from_folder.state_dict.keys()
    assert all(torch.equal(t, from_folder.state_dict[n]) for n, t in loaded.state_dict.items())


def test_config_mapping():
    configs = {case: load_hf_model(_build(case)).config for case in ("gpt2", "llama-gqa", "bert", "neox-parallel")}
    assert configs["gpt2"].tie_embeddings and configs["gpt2"].act_fn == "gelu_new"
    assert (configs["llama-gqa"].n_kv_heads, configs["llama-gqa"].rotary_base) == (2, 500.0)
    assert configs["llama-gqa"].gated_mlp and configs["llama-gqa"].norm == "rmsnorm"
    bert = configs["bert"]
    assert (bert.post_norm, bert.embed_norm, bert.final_norm, bert.causal, bert.has_unembed) == (
        True, True, False, False, False)
    assert (bert.act_fn, bert.n_token_types, bert.d_mlp) == ("gelu", 2, 37)
    neox = configs["neox-parallel"]
    assert (neox.rotary_dim, neox.parallel_attn_mlp, neox.unembed_bias) == (2, True, False)


def test_loaded_weights_are_copies():
    """Ablating our weights must not edit the transformers model they came from."""
    hf_model = _build("llama-gqa")
    loaded = load_hf_model(hf_model)
    loaded.state_dict["embed.W_E"].zero_()
    assert hf_model.model.embed_tokens.weight.abs().sum() > 0


def test_pytorch_bin_with_old_gpt2_layout(tmp_path):
    """The original `gpt2` upload: pytorch_model.bin, no `transformer.` prefix, causal-mask buffers."""
    hf_model = _build("gpt2")
    hf_model.save_pretrained(tmp_path)
    weights = {key.removeprefix("transformer."): t for key, t in load_file(tmp_path / "model.safetensors").items()}
    for layer in range(2):
        weights[f"h.{layer}.attn.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
        weights[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "model.safetensors").unlink()
    torch.save(weights, tmp_path / "pytorch_model.bin")
    assert _max_diff("gpt2", hf_model, load_hf_folder(tmp_path)) <= TOL


def test_sharded_safetensors(tmp_path):
    hf_model = _build("neox-parallel")
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert _max_diff("neox-parallel", hf_model, load_hf_folder(tmp_path)) <= TOL


# ----- tokenizers ----------------------------------------------------------------------------------
def _word_tokenizer() -> RustTokenizer:
    """A word-level tokenizer whose tokenizer.json truncates and pads, as some uploads do."""
    words = ["<pad>", "<s>", "</s>", "<unk>", "the", "cat", "sat", "on", "mat"]
    backend = RustTokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.add_special_tokens(["<pad>", "<s>", "</s>"])
    backend.enable_truncation(max_length=3)
    backend.enable_padding(length=8, pad_id=0, pad_token="<pad>")
    return backend


def test_folder_tokenizer_ids_and_no_truncation(tmp_path):
    _build("gpt2").save_pretrained(tmp_path)
    _word_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>", "pad_token": "<pad>"}))
    tokenizer = load_hf_folder(tmp_path).tokenizer
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert not tokenizer.uses_post_processor
    assert tokenizer.encode("the cat sat on the mat") == [1, 4, 5, 6, 7, 4, 8]  # BOS, not cut at 3, no padding


def test_transformers_tokenizer_is_converted():
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(), bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>")
    tokenizer = load_hf_model(_build("gpt2"), fast).tokenizer
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert tokenizer.encode("the cat sat on the mat") == [1, 4, 5, 6, 7, 4, 8]
    assert fast.backend_tokenizer.truncation is not None  # theirs is left as it was


# ----- the real all-MiniLM-L6-v2 -------------------------------------------------------------------
@pytest.mark.real_model
def test_minilm_matches_transformers(minilm_dir):
    loaded = load_hf_folder(minilm_dir)
    texts = ["Attention heads", "The quick brown fox jumps over the lazy dog.",
             "Induction heads copy what followed an earlier occurrence of the current token."]
    ids, mask = loaded.tokenizer.batch(texts)
    reference_ids = transformers.AutoTokenizer.from_pretrained(minilm_dir)(texts, padding=True, return_tensors="pt")
    assert torch.equal(ids, reference_ids["input_ids"])
    assert torch.equal(mask, reference_ids["attention_mask"])
    ours = HookedTransformer.from_loaded(loaded)
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        actual = ours(ids, attention_mask=mask, return_type="hidden")
    assert (expected - actual)[mask.bool()].abs().max() <= TOL


# ----- bad input -----------------------------------------------------------------------------------
def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))


def test_folder_without_weights(tmp_path):
    _build("gpt2").config.save_pretrained(tmp_path)
    with pytest.raises(ModelFormatError, match="no weights found; looked for model.safetensors, .*pytorch_model.bin"):
        load_hf_folder(tmp_path)


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        load_hf_folder(tmp_path / "nowhere")
    with pytest.raises(ModelFormatError, match="no config.json"):
        load_hf_folder(tmp_path)


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(UnsupportedModelError, match="model_type 't5' is not supported"):
        load_hf_folder(tmp_path)


def test_unsupported_architecture_class(tmp_path):
    _build("gpt2").save_pretrained(tmp_path)
    _edit_config(tmp_path, architectures=["GPT2ForSequenceClassification"])
    with pytest.raises(UnsupportedModelError, match="GPT2ForSequenceClassification is not supported"):
        load_hf_folder(tmp_path)


@pytest.mark.parametrize(("case", "changes", "message"), [
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx = True"),
    ("gpt2", {"activation_function": "gelu_fast"}, "activation_function = 'gelu_fast'"),
    ("llama-gqa", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "rope_parameters"),
    ("llama-gqa", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ("llama-gqa", {"attention_bias": True}, "attention_bias = True"),
    ("bert", {"position_embedding_type": "relative_key"}, "position_embedding_type = 'relative_key'"),
    ("bert", {"is_decoder": True}, "is_decoder = True"),
])
def test_unsupported_settings(tmp_path, case, changes, message):
    _build(case).save_pretrained(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(UnsupportedModelError, match=message):
        load_hf_folder(tmp_path)


def _rewrite_weights(folder: Path, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors")


def test_extra_weight_is_an_error(tmp_path):
    _build("gpt2").save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda w: w.update({"transformer.h.0.attn.q_norm.weight": torch.ones(8)}))
    with pytest.raises(ModelFormatError, match="does not use: h.0.attn.q_norm.weight"):
        load_hf_folder(tmp_path)


def test_missing_weight_is_an_error(tmp_path):
    _build("gpt2").save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda w: w.pop("transformer.h.1.ln_2.bias"))
    with pytest.raises(ModelFormatError, match=r"missing weights: h\.1\.ln_2\.bias"):
        load_hf_folder(tmp_path)


def test_missing_weight_in_model_object():
    hf_model = _build("bert")
    hf_model.encoder.layer[1].attention.self.key.bias = None
    with pytest.raises(ModelFormatError, match=r"missing weights: encoder\.layer\.1\.attention\.self\.key\.bias"):
        load_hf_model(hf_model)


def test_untied_unembedding_missing(tmp_path):
    _build("llama-gqa").save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda w: w.pop("lm_head.weight"))
    with pytest.raises(ModelFormatError, match="missing weights: lm_head.weight"):
        load_hf_folder(tmp_path)


def test_tied_copy_that_differs(tmp_path):
    _build("llama-mha-tied").save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda w: w.update({"lm_head.weight": torch.zeros(VOCAB, 32)}))
    with pytest.raises(ModelFormatError, match="lm_head.weight differs from embed_tokens.weight"):
        load_hf_folder(tmp_path)


def test_wrong_shape_is_an_error(tmp_path):
    _build("neox-parallel").save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda w: w.update({
        "gpt_neox.layers.0.attention.query_key_value.weight": torch.zeros(90, 32)}))
    with pytest.raises(ModelFormatError, match=r"query_key_value.weight of shape \(90, 32\) does not fit"):
        load_hf_folder(tmp_path)


def test_truncated_weight_file(tmp_path):
    _build("gpt2").save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="not a readable weight file"):
        load_hf_folder(tmp_path)


def test_hub_offline_is_a_fetch_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FetchError, match="hf:gpt2.*HF_HUB_OFFLINE is set"):
        load_hf_hub("hf:gpt2", cache_dir=tmp_path)
