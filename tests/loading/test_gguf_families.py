"""GGUF round trips for qwen2, qwen3, gemma2, gemma3 and phi3: a tiny transformers model written with the
gguf package's GGUFWriter the way llama.cpp's convert_hf_to_gguf.py writes it (tensor names, no Q/K
permutation for these NeoX-RoPE architectures, Gemma norms as 1 + w, Phi-3's fused tensors kept), loaded
back, equals the model; where transformers reads the architecture from GGUF, its loading agrees too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
import torch
import transformers

from headscope.loading.gguf import load_gguf
from headscope.model.transformer import HookedTransformer
from tests.loading.test_gguf import TEXTS, _tiny_tokenizer
from tests.loading.test_hf_families import COMMON, LAYER_TYPES, VOCAB, WINDOW

N_POS = 16
# Models llama.cpp converts: Qwen without windows (Qwen2.5/Qwen3 ship use_sliding_window false), Gemma with
# query_pre_attn_scalar = head_dim (llama.cpp derives the scale from the head size), Phi-3 with and without.
GEMMA = dict(COMMON, query_pre_attn_scalar=8, sliding_window=WINDOW, layer_types=LAYER_TYPES)
CASES = {
    "qwen2": lambda: (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(**COMMON, rope_theta=500.0)),
    "qwen3": lambda: (transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**COMMON)),
    # transformers' GGUF config map lacks key_length, so it assumes Qwen3's head_dim of 128.
    "qwen3-d128": lambda: (transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**COMMON | {"head_dim": 128})),
    "gemma2": lambda: (transformers.Gemma2ForCausalLM, transformers.Gemma2Config(
        **GEMMA, attn_logit_softcapping=0.8, final_logit_softcapping=0.1)),
    "gemma3": lambda: (transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig(
        **GEMMA, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})),
    "phi3": lambda: (transformers.Phi3ForCausalLM, transformers.Phi3Config(**COMMON)),
    "phi3-window": lambda: (transformers.Phi3ForCausalLM, transformers.Phi3Config(**COMMON, sliding_window=WINDOW)),
}
TRANSFORMERS_READS = ("qwen2", "qwen3-d128", "phi3")  # its GGUF config map lacks windows, soft-caps and scales

_RENAMES = [  # Hugging Face module name -> llama.cpp's, after `model.layers.N.` -> `blk.N.`
    ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"), ("self_attn.qkv_proj", "attn_qkv"), ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
    ("mlp.gate_up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"), ("post_feedforward_layernorm", "post_ffw_norm"),
]


def _gguf_name(name: str, gemma: bool) -> str:
    if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}[name]
    name = name.replace("model.layers.", "blk.")
    # Gemma's post_attention_layernorm follows attention; elsewhere it is the norm before the MLP.
    renames = _RENAMES + [("post_attention_layernorm", "post_attention_norm" if gemma else "ffn_norm")]
    for hf, ours in renames:
        name = name.replace(f".{hf}.", f".{ours}.")
    return name


def write_gguf(model: transformers.PreTrainedModel, arch: str, path: Path, pre_tokenizer: str | None = None,
               vocabulary: Callable[[gguf.GGUFWriter], None] | None = None) -> Path:
    """The model as llama.cpp would convert it (F32 tensors); with `pre_tokenizer`, a byte-level BPE tokenizer
    trained on a few lines, under that `tokenizer.ggml.pre`; `vocabulary` writes any other tokenizer."""
    cfg, gemma = model.config, arch.startswith("gemma")
    writer = gguf.GGUFWriter(path, arch)
    if vocabulary is not None:
        vocabulary(writer)
    if pre_tokenizer is not None:
        tokens, merges, types = _tiny_tokenizer()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer)
        writer.add_token_list(tokens + [f"<unused{i}>" for i in range(cfg.vocab_size - len(tokens))])
        writer.add_token_merges(merges)
        writer.add_token_types(types + [3] * (cfg.vocab_size - len(tokens)))
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.pad_token_id is not None:
        writer.add_pad_token_id(cfg.pad_token_id)  # transformers reads it (Phi-3 defaults to 32000)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    writer.add_rope_freq_base(rope["rope_theta"])
    if getattr(cfg, "sliding_window", None):
        writer.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if arch == "gemma3":
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in cfg.layer_types])
        writer.add_rope_freq_base_swa(cfg.rope_parameters["sliding_attention"]["rope_theta"])
    tied = cfg.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        if gemma and name.endswith("norm.weight"):
            tensor = tensor + 1.0  # convert_hf_to_gguf.py's norm_shift
        writer.add_tensor(_gguf_name(name, gemma), tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _build(case: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    cls, config = CASES[case]()
    config._attn_implementation = "eager"
    model = cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn_like(param))
            elif any(key in name for key in ("q_proj", "k_proj", "qkv_proj")):
                param.mul_(8.0)
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def written(request, tmp_path_factory):
    model = _build(request.param)
    arch = request.param.split("-")[0]
    path = write_gguf(model, arch, tmp_path_factory.mktemp(request.param) / f"{arch}.gguf")
    return request.param, model, path


def _tokens() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, N_POS), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def test_round_trip_equals_the_model(written):
    case, hf_model, path = written
    loaded = load_gguf(path)
    ours = HookedTransformer.from_loaded(loaded).eval()
    tokens = _tokens()
    reference = hf_model(tokens, output_attentions=True)
    logits, cache = ours.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert (reference.logits - logits).abs().max() <= 1e-4
    for layer, pattern in enumerate(reference.attentions):
        assert (pattern - cache[f"blocks.{layer}.attn.hook_pattern"]).abs().max() <= 1e-5
    windows = {"gemma2": (WINDOW, None, WINDOW), "gemma3": (WINDOW, None, WINDOW), "phi3-window": (WINDOW,) * 3}
    assert loaded.config.windows == windows.get(case, ())


@pytest.mark.parametrize("case", TRANSFORMERS_READS)
@torch.no_grad()
def test_transformers_gguf_loading_agrees(case, tmp_path):
    model = _build(case)
    path = write_gguf(model, case.split("-")[0], tmp_path / "model.gguf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    ours = HookedTransformer.from_loaded(load_gguf(path)).eval()
    tokens = _tokens()
    assert (theirs(tokens).logits - ours(tokens)).abs().max() <= 1e-4


def test_qwen2_pre_tokenizer_matches_transformers(tmp_path):
    """`tokenizer.ggml.pre = qwen2` (Qwen2.5 and Qwen3 GGUF files): our tokenizer against transformers' GGUF one."""
    model = _build("qwen2")
    model.resize_token_embeddings(320)  # room for the tiny BPE vocabulary
    path = write_gguf(model, "qwen2", tmp_path / "qwen2.gguf", pre_tokenizer="qwen2")
    ours = load_gguf(path).tokenizer
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in [*TEXTS, "it's THEY'RE 12345 x\n\n  y"]:
        assert ours.encode(text, prepend_bos=False) == reference(text, add_special_tokens=False)["input_ids"], text
