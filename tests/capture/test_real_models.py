"""Capture on the two packaged real models: fused statistics equal the explicit reference."""

import pytest
import torch

from headscope.capture.datasets import from_texts, repeated_random_tokens
from headscope.capture.engine import capture
from headscope.capture.statistics import CAUSAL_STATISTICS, STATISTICS
from tests.capture.test_engine import assert_same_result

pytestmark = pytest.mark.real_model


@torch.no_grad()
def test_smollm2_fused_equals_explicit(smollm2):
    dataset = repeated_random_tokens(2, period=24, vocab_size=smollm2.cfg.d_vocab, seed=0,
                                     bos_token_id=smollm2.tokenizer.bos_token_id, low=100)
    fused = capture(smollm2, dataset, CAUSAL_STATISTICS, progress=False)
    explicit = capture(smollm2, dataset, CAUSAL_STATISTICS, method="explicit", progress=False)
    assert_same_result(fused, explicit)
    # A trained model has induction heads: the best head puts most of its attention on the target.
    assert fused.mean("induction").max() > 0.5


@torch.no_grad()
def test_minilm_fused_equals_explicit_with_padding(minilm):
    texts = ["The cat sat on the mat because the mat was warm.", "A short one.",
             "Attention heads in BERT attend to the next token, the previous token, and [SEP]."]
    dataset = from_texts(texts, minilm.tokenizer)
    assert dataset.attention_mask is not None and dataset.has_bos
    fused = capture(minilm, dataset, STATISTICS, progress=False)
    explicit = capture(minilm, dataset, STATISTICS, method="explicit", progress=False)
    assert_same_result(fused, explicit)
