"""Our reproduction of TransformerLens' detect_head against the real one, through a bridge on the same weights."""

import itertools

import pytest
import torch

from headscope.analysis import tl_detect_scores
from headscope.errors import InputError
from headscope.loading.load import load_model
from headscope.loading.transformer_lens import boot_bridge
from tests.loading.test_transformer_lens import tiny_hf_model, tiny_tokenizer

# Equal-length prompts (detect_head scores each unpadded prompt alone), with repeats so that the duplicate
# and induction patterns are not empty.
TEXTS = ["w5 w6 w7 w8 w5 w6 w7 w8 w9", "w4 w9 w4 w9 w6 w7 w4 w9 w8"]
DETECTIONS = ["previous_token_head", "duplicate_token_head", "induction_head"]


@pytest.mark.parametrize("kind", ["gpt2", "llama-gqa"])
@torch.no_grad()
def test_every_detection_equals_transformer_lens(kind):
    from transformer_lens.head_detector import detect_head

    bridge = boot_bridge(tiny_hf_model(kind), tiny_tokenizer(), name=f"tiny-{kind}")
    ours = load_model(bridge).eval()
    tokens = bridge.to_tokens(TEXTS)  # BOS first, as detect_head tokenizes them
    for detection, measure, exclude_bos, exclude_current in itertools.product(
            DETECTIONS, ["mul", "abs"], [False, True], [False, True]):
        options = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current, error_measure=measure)
        reference = detect_head(bridge, TEXTS, detection, **options)
        mine = tl_detect_scores(ours, tokens, detection, **options)
        assert mine.shape == reference.shape == (2, 4)
        torch.testing.assert_close(mine, reference.float(), atol=1e-5, rtol=0, msg=f"{detection} {options}")


@torch.no_grad()
def test_the_callers_pattern_is_not_changed_and_bad_input_is_clear():
    bridge = boot_bridge(tiny_hf_model("gpt2"), tiny_tokenizer(), name="tiny-gpt2")
    ours = load_model(bridge).eval()
    tokens = bridge.to_tokens(TEXTS)
    before = tokens.clone()
    tl_detect_scores(ours, tokens, "induction_head", exclude_bos=True, exclude_current_token=True)
    assert torch.equal(tokens, before)
    with pytest.raises(InputError, match="unknown detection 'induction'"):
        tl_detect_scores(ours, tokens, "induction")
    with pytest.raises(InputError, match="unknown error_measure 'max'"):
        tl_detect_scores(ours, tokens, "induction_head", error_measure="max")
    with pytest.raises(InputError, match="2 <= pos < n_ctx"):
        tl_detect_scores(ours, tokens[:, :1], "induction_head")
