"""The GGUF loader: SmolLM2 against transformers' own GGUF loading, a tiny synthetic llama holding every
supported tensor type, and files that must be refused."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import regex
import torch
from gguf import GGMLQuantizationType as Q
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers, trainers

from headscope.errors import ModelFormatError, UnsupportedModelError
from headscope.loading.gguf import load_gguf, unpermute_rope_rows
from headscope.model.transformer import HookedTransformer

TEXTS = [
    "Hello world",
    "  leading spaces and   inner   gaps  ",
    "line one\nline two\n\n\tTabbed\r\nwindows",
    "Numbers: 12345, 3.14159, 2024-01-01, 1,000,000 and x=1;y=22;z=333",
    "Unicode: café naïve 日本語 😀 Ελληνικά",
    "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "don't I'll we've THEY'RE",
    "<|endoftext|><repo_name>headscope<file_sep>",
]
# Whitespace runs right before a digit: llama.cpp's `smollm` pre-tokenizer isolates digits first, so
# "a  1" is "a", "  ", "1". transformers 5.24 has no entry for "smollm" and splits "a", " ", " 1".
DIGIT_AFTER_SPACES = ["a  1", "  1", "\n\n1", "b   22 and\t\t3"]
PROSE = ("The quick brown fox jumps over the lazy dog. Attention heads move information between positions.\n"
         "In 1905, Einstein published four papers; one of them introduced E = mc^2.")


# ----- SmolLM2-135M (real weights) ----------------------------------------------------------------
@pytest.mark.real_model
def test_smollm2_config(smollm2: HookedTransformer) -> None:
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_model) == (30, 9, 3, 64, 576)
    assert (cfg.d_mlp, cfg.d_vocab, cfg.n_ctx, cfg.rotary_base) == (1536, 49152, 8192, 100000.0)
    assert cfg.tie_embeddings and cfg.gated_mlp and cfg.norm == "rmsnorm"


@pytest.mark.real_model
def test_smollm2_weights_equal_transformers(smollm2, hf_smollm2) -> None:
    """Bit-identical to transformers' dequantization and Q/K unpermutation, mapped back to [out, in] rows."""
    cfg, hf = smollm2.cfg, hf_smollm2.model
    assert torch.equal(smollm2.embed.W_E, hf.embed_tokens.weight)
    assert torch.equal(smollm2.ln_final.w, hf.norm.weight)
    for block, layer in zip(smollm2.blocks, hf.layers):
        attn, mlp = layer.self_attn, layer.mlp
        pairs = [
            (block.attn.W_Q.transpose(1, 2).reshape(cfg.n_heads * cfg.d_head, -1), attn.q_proj.weight),
            (block.attn.W_K.transpose(1, 2).reshape(cfg.kv_heads * cfg.d_head, -1), attn.k_proj.weight),
            (block.attn.W_V.transpose(1, 2).reshape(cfg.kv_heads * cfg.d_head, -1), attn.v_proj.weight),
            (block.attn.W_O.reshape(-1, cfg.d_model).T, attn.o_proj.weight),
            (block.mlp.W_gate.T, mlp.gate_proj.weight), (block.mlp.W_in.T, mlp.up_proj.weight),
            (block.mlp.W_out.T, mlp.down_proj.weight),
            (block.ln1.w, layer.input_layernorm.weight), (block.ln2.w, layer.post_attention_layernorm.weight),
        ]
        assert all(torch.equal(ours, theirs) for ours, theirs in pairs)


@pytest.mark.real_model
def test_smollm2_logits_and_patterns_match_transformers(smollm2, hf_smollm2) -> None:
    tokens = smollm2.to_tokens(PROSE)
    with torch.no_grad():
        logits, cache = smollm2.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
        reference = hf_smollm2(tokens, output_attentions=True)
    assert (logits - reference.logits).abs().max() <= 1e-4
    for layer, pattern in enumerate(reference.attentions):
        assert (cache[f"blocks.{layer}.attn.hook_pattern"] - pattern).abs().max() <= 1e-5, layer


@pytest.mark.real_model
def test_smollm2_fused_path_matches_transformers(smollm2, hf_smollm2) -> None:
    tokens = smollm2.to_tokens(PROSE)
    with torch.no_grad():
        assert (smollm2(tokens) - hf_smollm2(tokens).logits).abs().max() <= 1e-4


@pytest.mark.real_model
def test_smollm2_knows_paris(smollm2) -> None:
    with torch.no_grad():
        logits = smollm2(smollm2.to_tokens("The capital of France is"))
    assert smollm2.tokenizer.decode([int(logits[0, -1].argmax())]) == " Paris"


@pytest.mark.real_model
@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_tokenizer_matches_transformers(smollm2, hf_smollm2_tokenizer, text: str) -> None:
    ours = smollm2.tokenizer.encode(text, prepend_bos=False)
    assert ours == hf_smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert smollm2.tokenizer.decode(ours) == text


@pytest.mark.real_model
def test_smollm2_special_tokens(smollm2) -> None:
    tokenizer = smollm2.tokenizer
    assert tokenizer.encode("<|im_start|>", prepend_bos=False) == [1]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.encode("Hi")[0] == 1  # BOS is prepended by default, as in TransformerLens


def _llama_cpp_smollm_split(text: str) -> list[str]:
    """llama.cpp's `smollm` pre-tokenization (llama-vocab.cpp): isolate digits, then GPT-2's regex,
    each regex cutting every piece into its matches and the text between them."""
    pieces = [text]
    for pattern in (r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"):
        pieces = [part for piece in pieces for part in _split_keeping_gaps(pattern, piece)]
    return pieces


def _split_keeping_gaps(pattern: str, text: str) -> list[str]:
    parts, start = [], 0
    for match in regex.finditer(pattern, text):
        parts += [text[start:match.start()], match.group()]
        start = match.end()
    return [part for part in [*parts, text[start:]] if part]


@pytest.mark.real_model
@pytest.mark.parametrize("text", [t for t in TEXTS if "<" not in t] + DIGIT_AFTER_SPACES)
def test_smollm2_pre_tokenizer_follows_llama_cpp(smollm2, text: str) -> None:
    backend = smollm2.tokenizer.backend
    ours = [backend.decoder.decode([piece]) for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    assert ours == _llama_cpp_smollm_split(text)


# ----- a tiny synthetic llama, one tensor type per weight -----------------------------------------
N_LAYERS, D_MODEL, N_HEADS, N_KV_HEADS, D_MLP = 2, 64, 4, 2, 128
D_HEAD = D_MODEL // N_HEADS
# Every supported type appears at least once, on a different weight in each layer.
LAYER_TYPES = [
    {"attn_q": Q.F32, "attn_k": Q.F16, "attn_v": Q.Q8_0, "attn_output": Q.Q4_0,
     "ffn_gate": Q.Q4_1, "ffn_up": Q.BF16, "ffn_down": Q.Q8_0},
    {"attn_q": Q.Q4_1, "attn_k": Q.Q4_0, "attn_v": Q.F16, "attn_output": Q.BF16,
     "ffn_gate": Q.F32, "ffn_up": Q.Q8_0, "ffn_down": Q.Q4_0},
]
# Relative Frobenius error of dequantized random normal weights; a layout mistake gives about 1.4.
TOLERANCE = {Q.F32: 1e-7, Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 1e-2, Q.Q4_0: 0.15, Q.Q4_1: 0.15}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["the cat sat on the mat", "attention heads attend to the previous token", "def f(x): return x + 1",
          "numbers 123 456 and spaces   here", "café naïve"] * 3


def _tiny_tokenizer() -> tuple[list[str], list[str], list[int]]:
    """Tokens, merges and llama.cpp token types of a byte-level BPE trained on a few lines."""
    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    vocab = backend.get_vocab()
    tokens = sorted(vocab, key=vocab.get) + ["<think>"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(backend.to_str())["model"]["merges"]]
    types = [3 if t in SPECIALS else 4 if t == "<think>" else 1 for t in tokens]
    return tokens, merges, types


def _llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows (convert_hf_to_gguf.py, `LlamaModel.permute`)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add(writer: gguf.GGUFWriter, name: str, weight: np.ndarray, qtype: Q) -> None:
    if qtype == Q.F32:
        writer.add_tensor(name, weight)
    elif qtype == Q.F16:
        writer.add_tensor(name, weight.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)


def _write_gguf(path: Path, layer_types: list[dict[str, Q]] = LAYER_TYPES, extra_kv: dict | None = None,
                extra_tensors: dict[str, tuple[np.ndarray, Q]] | None = None) -> dict[str, np.ndarray]:
    """Write a tiny random llama; returns the float weights in Hugging Face row order (before permuting)."""
    rng = np.random.default_rng(0)
    tokens, merges, types = _tiny_tokenizer()
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(N_LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(D_MODEL)
    writer.add_feed_forward_length(D_MLP)
    writer.add_head_count(N_HEADS)
    writer.add_head_count_kv(N_KV_HEADS)
    writer.add_rope_freq_base(500.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for key, value in (extra_kv or {}).items():
        writer.add_key_value(key, value, gguf.GGUFValueType.STRING if isinstance(value, str)
                             else gguf.GGUFValueType.FLOAT32)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    weights = {"token_embd.weight": normal(len(tokens), D_MODEL), "output.weight": normal(len(tokens), D_MODEL),
               "output_norm.weight": 1 + 0.1 * normal(D_MODEL)}
    _add(writer, "token_embd.weight", weights["token_embd.weight"], Q.Q8_0)
    _add(writer, "output.weight", weights["output.weight"], Q.Q4_1)
    _add(writer, "output_norm.weight", weights["output_norm.weight"], Q.F32)
    shapes = {"attn_q": (N_HEADS * D_HEAD, D_MODEL), "attn_k": (N_KV_HEADS * D_HEAD, D_MODEL),
              "attn_v": (N_KV_HEADS * D_HEAD, D_MODEL), "attn_output": (D_MODEL, N_HEADS * D_HEAD),
              "ffn_gate": (D_MLP, D_MODEL), "ffn_up": (D_MLP, D_MODEL), "ffn_down": (D_MODEL, D_MLP)}
    for layer, types_here in enumerate(layer_types):
        for part, shape in shapes.items():
            name = f"blk.{layer}.{part}.weight"
            weights[name] = normal(*shape) / np.float32(np.sqrt(shape[1]))
            stored = weights[name]
            if part in ("attn_q", "attn_k"):
                stored = _llama_cpp_permute(stored, N_HEADS if part == "attn_q" else N_KV_HEADS)
            _add(writer, name, stored, types_here[part])
        for norm in ("attn_norm", "ffn_norm"):
            weights[f"blk.{layer}.{norm}.weight"] = 1 + 0.1 * normal(D_MODEL)
            _add(writer, f"blk.{layer}.{norm}.weight", weights[f"blk.{layer}.{norm}.weight"], Q.F32)
    for name, (weight, qtype) in (extra_tensors or {}).items():
        _add(writer, name, weight, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, _write_gguf(path)


def test_tiny_config(tiny_gguf) -> None:
    cfg = load_gguf(tiny_gguf[0]).config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.d_head, cfg.d_mlp) == (2, 64, 4, 2, 16, 128)
    assert not cfg.tie_embeddings and cfg.rotary_base == 500.0 and cfg.n_ctx == 128


def test_every_type_dequantizes_close_to_the_original(tiny_gguf) -> None:
    """Our per-head weights, mapped back to Hugging Face's [out, in] rows, are the unpermuted originals."""
    path, originals = tiny_gguf
    state = load_gguf(path).state_dict
    as_linear = {
        "attn_q": lambda layer: state[f"blocks.{layer}.attn.W_Q"].transpose(1, 2).reshape(N_HEADS * D_HEAD, -1),
        "attn_k": lambda layer: state[f"blocks.{layer}.attn.W_K"].transpose(1, 2).reshape(N_KV_HEADS * D_HEAD, -1),
        "attn_v": lambda layer: state[f"blocks.{layer}.attn.W_V"].transpose(1, 2).reshape(N_KV_HEADS * D_HEAD, -1),
        "attn_output": lambda layer: state[f"blocks.{layer}.attn.W_O"].reshape(-1, D_MODEL).T,
        "ffn_gate": lambda layer: state[f"blocks.{layer}.mlp.W_gate"].T,
        "ffn_up": lambda layer: state[f"blocks.{layer}.mlp.W_in"].T,
        "ffn_down": lambda layer: state[f"blocks.{layer}.mlp.W_out"].T,
    }
    for layer, layer_types in enumerate(LAYER_TYPES):
        for part, qtype in layer_types.items():
            original = torch.from_numpy(originals[f"blk.{layer}.{part}.weight"])
            error = (as_linear[part](layer) - original).norm() / original.norm()
            assert error <= TOLERANCE[qtype], (layer, part, qtype.name, float(error))
    assert torch.equal(state["ln_final.w"], torch.from_numpy(originals["output_norm.weight"]))
    unembed_error = (state["unembed.W_U"].T - torch.from_numpy(originals["output.weight"])).norm()
    assert unembed_error / np.linalg.norm(originals["output.weight"]) <= TOLERANCE[Q.Q4_1]


def test_unpermute_inverts_llama_cpp_permute() -> None:
    w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(4 * 16, 3)
    restored = unpermute_rope_rows(torch.from_numpy(_llama_cpp_permute(w, 4)), 4)
    assert torch.equal(restored, torch.from_numpy(w))


def test_tiny_logits_match_transformers(tiny_gguf) -> None:
    from transformers import AutoModelForCausalLM

    path = tiny_gguf[0]
    model = HookedTransformer.from_loaded(load_gguf(path)).eval()
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    tokens = model.to_tokens("the cat attends to the previous token 123")
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
        out = reference(tokens, output_attentions=True)
    assert (logits - out.logits).abs().max() <= 1e-4
    for layer, pattern in enumerate(out.attentions):
        assert (cache[f"blocks.{layer}.attn.hook_pattern"] - pattern).abs().max() <= 1e-5


def test_tiny_tokenizer_matches_transformers(tiny_gguf) -> None:
    from transformers import AutoTokenizer

    path = tiny_gguf[0]
    ours = load_gguf(path).tokenizer
    reference = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in [*CORPUS[:5], "<|im_start|>the cat<|im_end|>", "<think> 42\n\n unseen wörds"]:
        assert ours.encode(text, prepend_bos=False) == reference(text, add_special_tokens=False)["input_ids"]
    assert ours.encode("<|im_start|><think>", prepend_bos=False) == [1, ours.vocab_size - 1]


# ----- files that must be refused -----------------------------------------------------------------
def test_truncated_file(tiny_gguf, tmp_path: Path) -> None:
    data = tiny_gguf[0].read_bytes()
    for size in (10, 1000, len(data) // 2, len(data) - 100):
        truncated = tmp_path / f"cut-{size}.gguf"
        truncated.write_bytes(data[:size])
        with pytest.raises(ModelFormatError, match=f"cut-{size}.gguf"):
            load_gguf(truncated)


def test_text_file_named_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelFormatError, match="notes.gguf"):
        load_gguf(fake)


def test_unsupported_architecture(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "mamba.gguf", "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="'mamba'"):
        load_gguf(tmp_path / "mamba.gguf")


def test_rope_scaling_is_refused(tmp_path: Path) -> None:
    _write_gguf(tmp_path / "scaled.gguf", extra_kv={"llama.rope.scaling.type": "linear"})
    with pytest.raises(UnsupportedModelError, match="rope.scaling.type"):
        load_gguf(tmp_path / "scaled.gguf")


def test_unused_tensor_is_refused(tmp_path: Path) -> None:
    _write_gguf(tmp_path / "extra.gguf", extra_tensors={"rope_freqs.weight": (np.ones(8, np.float32), Q.F32)})
    with pytest.raises(ModelFormatError, match="rope_freqs.weight"):
        load_gguf(tmp_path / "extra.gguf")


def test_unsupported_quantization_is_refused(tmp_path: Path) -> None:
    _write_gguf(tmp_path / "q5.gguf", layer_types=[LAYER_TYPES[0], {**LAYER_TYPES[1], "ffn_up": Q.Q5_0}])
    with pytest.raises(UnsupportedModelError, match="blk.1.ffn_up.weight has type Q5_0"):
        load_gguf(tmp_path / "q5.gguf")
