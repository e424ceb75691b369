"""Recorded patterns equal the model's own hook_pattern, and read back from disk unchanged."""

import pytest
import torch

from headscope.capture.datasets import from_tensor
from headscope.capture.engine import capture
from headscope.capture.recorder import load_patterns
from headscope.errors import InputError
from headscope.heads import parse_heads
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS


@pytest.mark.parametrize("method", ["fused", "explicit"])
@torch.no_grad()
def test_recorded_patterns_equal_hook_pattern(tiny_model, method, tmp_path):
    tokens = torch.randint(0, 99, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    mask[2, 7:] = 0
    dataset = from_tensor(tokens, attention_mask=mask)
    out = tmp_path / "patterns.safetensors"
    result = capture(tiny_model, dataset, ["attention_sink"], patterns="L1H2,L0H0", pattern_prompts=[0, 2],
                     patterns_out=out, method=method, progress=False)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"),
                                         attention_mask=mask)
    saved = load_patterns(out)
    for (layer, head) in [(1, 2), (0, 0)]:
        for prompt, length in [(0, 11), (2, 7)]:
            expected = cache[f"blocks.{layer}.attn.hook_pattern"][prompt, head, :length, :length]
            key = (f"L{layer}H{head}", prompt)
            torch.testing.assert_close(result.patterns.patterns[key], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(saved.patterns[key], result.patterns.patterns[key])
            torch.testing.assert_close(saved.tokens[prompt], tokens[prompt, :length])
    assert len(saved.patterns) == 4
    assert saved.meta["n_prompts"] == 3


def test_head_names_are_checked():
    assert parse_heads("L1H6, L0H3", 2, 8) == [(1, 6), (0, 3)]
    with pytest.raises(InputError, match="head L99H0 does not exist: the model has 2 layers x 8 heads"):
        parse_heads("L99H0", 2, 8)
    with pytest.raises(InputError, match="bad head name 'foo'"):
        parse_heads(["foo"], 2, 8)


def test_bad_recording_requests_and_files_are_clear_errors(tmp_path):
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    dataset = from_tensor(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(InputError, match="prompt 5 does not exist: the dataset has 2 prompts"):
        capture(model, dataset, patterns="L0H0", pattern_prompts=[5], progress=False)
    with pytest.raises(InputError, match="no pattern file"):
        load_patterns(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a tensor file")
    with pytest.raises(InputError, match="is not a headscope pattern file"):
        load_patterns(junk)
    with pytest.raises(InputError, match="folder .* does not exist"):
        capture(model, dataset, patterns="L0H0", patterns_out=tmp_path / "nope" / "p.safetensors", progress=False)
    assert not list(tmp_path.glob("**/*.tmp"))
