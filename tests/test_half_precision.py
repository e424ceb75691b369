"""Half precision against float32: every architecture's model in bfloat16 / float16 gives what the same
weights give in float32, within the stated tolerances below: its output (logits, or the last hidden state
of an encoder), its patterns, every capture statistic (the fused path) and the patterns capture records,
and a single-head ablation sweep; unpadded and right-padded. The same matrix runs on CUDA (float32 too)
where there is a GPU, against the float32 model on the CPU.

`scripts/half_precision_table.py` prints the measured errors beside these tolerances
(docs/half_precision.md).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from headscope.analysis.ablation import sweep
from headscope.capture.datasets import from_tensor
from headscope.capture.engine import capture
from headscope.capture.statistics import CAUSAL_STATISTICS, STATISTICS
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS

# Largest error allowed, per dtype and quantity: for the output and the sweep's per-head changes of the loss,
# relative to the largest float32 value (logits and sweep effects have no natural unit); for patterns and
# statistics absolute, in their units (probabilities, entropy in nats, mean_distance in positions). About 4x
# the largest error measured over the matrix (docs/half_precision.md): float16 keeps 11 significant bits,
# bfloat16 8. The float32 row bounds the CUDA kernels against the CPU ones.
RELATIVE = ("output", "sweep")
TOLERANCES = {
    torch.float32: {"output": 1e-4, "pattern": 2e-5, "statistic": 2e-5, "mean_distance": 1e-4, "sweep": 1e-3},
    torch.float16: {"output": 1e-2, "pattern": 8e-3, "statistic": 2e-3, "mean_distance": 6e-3, "sweep": 2.5e-2},
    torch.bfloat16: {"output": 6e-2, "pattern": 5e-2, "statistic": 1e-2, "mean_distance": 5e-2, "sweep": 1e-1},
}
SCALES = {"W_Q": 10.0, "W_K": 10.0, "W_V": 4.0, "W_O": 4.0, "W_E": 5.0, "W_U": 5.0}
RECORDED = ["L0H1", "L1H0"]  # heads whose patterns capture records, on prompts 0 and 1
# Architectures, plus a head size that is no multiple of 8 (the CUDA kernel pads it to one).
ARCHITECTURES = sorted(TINY_CONFIGS) + ["llama-gqa-d12"]
HALF = [torch.bfloat16, torch.float16]


def tiny_model(name: str) -> HookedTransformer:
    """The conftest fixture's model (seeded random weights, non-zero biases and norm weights), with its
    matrices scaled up so that heads matter: patterns well away from uniform, logits of a few units, and
    single-head ablations that move the loss by a few hundredths of a nat (at GPT-2's initialisation the
    patterns are nearly uniform and the effects 1e-3 or less, too small to compare anything)."""
    cfg = dataclasses.replace(TINY_CONFIGS["llama-gqa"], d_head=12) if name == "llama-gqa-d12" else TINY_CONFIGS[name]
    torch.manual_seed(0)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            kind = param_name.rsplit(".", 1)[-1]
            if not kind.startswith("W_"):
                param.add_(0.1 * torch.randn_like(param))
            param.mul_(SCALES.get(kind, 1.0))
    return model


def parity_dataset(padded: bool):
    g = torch.Generator().manual_seed(11)
    tokens = torch.randint(1, 20, (4, 24), generator=g)  # a small vocabulary: repeats, as in real text
    tokens[:, 0] = 0  # BOS
    if not padded:
        return from_tensor(tokens, has_bos=True)
    mask = torch.ones_like(tokens)
    mask[1, 17:] = 0
    mask[3, 6:] = 0
    return from_tensor(tokens, attention_mask=mask, has_bos=True)


@torch.no_grad()
def answers(model: HookedTransformer, dataset) -> dict[str, torch.Tensor]:
    """Everything the matrix compares, in float32 on the CPU: output and patterns at real positions (padded
    positions hold anything), each statistic's per-head means, recorded patterns, sweep deltas."""
    mask = dataset.attention_mask
    tokens = dataset.tokens.to(model.device)
    device_mask = None if mask is None else mask.to(model.device)
    real = torch.ones_like(dataset.tokens, dtype=torch.bool) if mask is None else mask.bool()
    out = {"output": model(tokens, attention_mask=device_mask).float().cpu()[real]}
    _, cache = model.run_with_cache(tokens, attention_mask=device_mask,
                                    names_filter=lambda n: n.endswith("hook_pattern"))
    for layer in range(model.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].float().cpu()  # (prompt, head, query, key)
        out[f"pattern L{layer}"] = pattern.transpose(1, 2)[real]  # rows of real queries
    names = CAUSAL_STATISTICS if model.cfg.causal else STATISTICS
    result = capture(model, dataset, names, patterns=RECORDED, pattern_prompts=[0, 1], progress=False)
    for name in result.statistics:
        out[f"statistic {name}"] = result.mean(name)
    for key, pattern in result.patterns.patterns.items():
        out[f"recorded {key[0]}/{key[1]}"] = pattern
    if model.cfg.has_unembed:  # ablation reads next-token logits: decoders only
        swept = sweep(model, dataset, "zero", "loss", n_bootstrap=10)
        out["sweep"] = torch.tensor([e.delta for e in swept.effects])
    return out


def tolerance_of(key: str, dtype: torch.dtype) -> float:
    quantity = key.split()[0]
    if quantity == "statistic":
        quantity = "mean_distance" if key.endswith("mean_distance") else "statistic"
    if quantity == "recorded":
        quantity = "pattern"
    return TOLERANCES[dtype][quantity]


def measure(name: str, dtype: torch.dtype, padded: bool, device: str = "cpu") -> dict[str, float]:
    """The largest error of each compared quantity (relative for `RELATIVE` ones, else absolute):
    `name`'s model in `dtype` on `device` against the same weights in float32 on the CPU."""
    reference = tiny_model(name)
    other = copy.deepcopy(reference).to(device=device, dtype=dtype)
    dataset = parity_dataset(padded)
    expected, got = answers(reference, dataset), answers(other, dataset)
    assert expected.keys() == got.keys()
    errors = {}
    for key, value in expected.items():
        both = ~value.isnan()  # a statistic no query counts for is NaN in both
        assert torch.equal(both, ~got[key].isnan()), key
        error = float((got[key][both] - value[both]).abs().max()) if both.any() else 0.0
        errors[key] = error / float(value.abs().max()) if key in RELATIVE else error
    return errors


def check(name: str, dtype: torch.dtype, padded: bool, device: str) -> None:
    errors = measure(name, dtype, padded, device)
    too_large = {k: (e, tolerance_of(k, dtype)) for k, e in errors.items() if not e <= tolerance_of(k, dtype)}
    assert not too_large, f"error, tolerance: {too_large}"


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_half_precision_gives_the_float32_answers_on_the_cpu(name, dtype, padded):
    check(name, dtype, padded, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("dtype", [torch.float32] + HALF, ids=str)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_cuda_gives_the_float32_cpu_answers(name, dtype, padded):
    """bfloat16 below compute capability 8.0 takes the reference fallback (with its warning): same bounds."""
    check(name, dtype, padded, "cuda")
