"""Notebook display: short reprs (names and shapes, never tensors) and HTML tables of every result."""

import json

import pytest
import torch

from headscope.analysis import classify_heads
from headscope.analysis.ablation import sweep
from headscope.analysis.flow import token_flow
from headscope.capture.datasets import repeated_random_tokens
from headscope.capture.engine import capture
from headscope.model.transformer import HookedTransformer
from headscope.notebook import html_table, results_html
from tests.conftest import TINY_CONFIGS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedTransformer(TINY_CONFIGS["gpt2"]).eval()


@pytest.fixture(scope="module")
def data():
    return repeated_random_tokens(4, 6, vocab_size=99, seed=0)


def assert_short(text: str) -> None:
    assert len(text) < 300 and "tensor(" not in text and "\n" not in text, text


def test_every_result_has_a_short_repr_and_a_table(model, data, tmp_path):
    from headscope import load_patterns

    table = classify_heads(model, data, n_bootstrap=50)
    swept = sweep(model, data, "zero", "loss", n_bootstrap=20)
    captured = capture(model, data, ["previous_token", "entropy"], patterns=["L1H2", "L0H0"], pattern_prompts=[0, 1],
                       patterns_out=tmp_path / "p.safetensors")
    patterns = load_patterns(tmp_path / "p.safetensors")
    flow = token_flow(model, data.tokens[:1], "maxflow")
    expected = [
        (table, ["RoleTable(", "heads='2x4'"]), (swept, ["AblationResult(", "effects=8"]),
        (captured, ["CaptureResult(", "previous_token"]), (patterns, ["Patterns(", "'L1H2'", "(12, 12)"]),
        (flow, ["FlowGraph(", "method='maxflow'", "positions=12"]),
    ]
    for result, parts in expected:
        text = repr(result)
        assert_short(text)
        for part in parts:
            assert part in text, (part, text)
        page = result._repr_html_()
        assert page.startswith('<table class="hs-table">') and "tensor(" not in page
    strongest = max(swept.effects, key=lambda e: abs(e.delta))
    first_row = swept._repr_html_().split("<tbody><tr>")[1]
    assert first_row.startswith(f"<td>L{strongest.heads[0][0]}H{strongest.heads[0][1]}</td>")
    assert f"baseline {swept.baseline:.4g}" in swept._repr_html_()
    assert "<td>L1H2</td><td>0</td><td>12 x 12</td>" in patterns._repr_html_()
    flows = [flow.graph.nodes[f"L0P{p}"]["flow"] for p in range(12)]
    assert f"<td>{max(flows):.4g}</td>" in flow._repr_html_().split("<tbody><tr>")[1]


def test_results_html_orders_patching_rows_and_escapes():
    data = {"model": "m", "method": "activation-patching", "metric": "logit-diff", "meta": {"baseline": 2.0},
            "results": [{"heads": ["L0H1"], "value": 0.1}, {"heads": ["L2H0", "L2H1"], "value": -0.9}]}
    page = results_html(data)
    assert page.index("L2H0,L2H1") < page.index("L0H1") and "baseline 2" in page
    assert "&lt;b&gt;" in html_table([{"a": "<b>"}]) and "… 3 more rows" in html_table([{"a": i} for i in range(5)], max_rows=2)
    json.dumps(data)  # the helper leaves its input as it was
    assert data["results"][0]["heads"] == ["L0H1"]
