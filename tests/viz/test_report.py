"""The report: one offline page (plotly.js once) with every section, drawn in headless Chromium with no
network; from files or from defaults; and as a PDF that renders."""

import json
import re

import pytest
import torch
from plotly.offline import get_plotlyjs

from headscope.analysis import classify_heads
from headscope.analysis.flow import token_flow
from headscope.capture.datasets import repeated_random_tokens
from headscope.errors import InputError
from headscope.export import write_graph
from headscope.loading.checkpoint import save_checkpoint
from headscope.model.transformer import HookedTransformer
from headscope.viz.page import write_page
from headscope.viz.report import ReportOptions, build_report, sha256_of
from tests.conftest import TINY_CONFIGS
from tests.viz.readback import external_references, ink_fraction, pdf_to_png, rendered_dom

SMALL = ReportOptions(num_prompts=3, seq_len=8, n_bootstrap=20, pattern_heads=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(HookedTransformer(TINY_CONFIGS["gpt2"]).eval(), tmp_path_factory.mktemp("m") / "tiny")


def test_default_report_is_one_offline_page_with_every_section(checkpoint, tmp_path):
    page = build_report(checkpoint, options=SMALL, command="headscope report tiny")
    path = tmp_path / "report.html"
    write_page(page, path)
    text = path.read_text()
    assert text.count(get_plotlyjs()[:300]) == 1  # plotly.js once, not once per figure
    assert external_references(text) == []
    assert path.stat().st_size < len(get_plotlyjs()) + 400_000
    dom = rendered_dom(path)
    for section in ("summary", "roles", "patterns", "ablation", "flow", "provenance"):
        assert f'id="{section}"' in dom, section
    assert 'id="patching"' not in dom  # only when a patching result is given
    assert dom.count('class="main-svg"') >= 2 * 4  # plotly draws each figure into two main-svg layers
    assert sha256_of(checkpoint) in dom and "headscope report tiny" in dom
    assert re.search(r"seed</td><td>0</td>", dom)


def test_report_from_files_and_as_pdf(checkpoint, tmp_path):
    from headscope.loading.load import load_model

    model = load_model(checkpoint)
    data = repeated_random_tokens(3, 4, vocab_size=99, seed=0)
    (tmp_path / "roles.json").write_text(classify_heads(model, data, n_bootstrap=20).to_json())
    patching = {"model": "tiny", "method": "activation-patching", "metric": "logit-diff", "meta": {},
                "results": [{"heads": ["L1H2"], "value": 0.75}, {"heads": ["L0H0"], "value": -0.25}]}
    (tmp_path / "patching.json").write_text(json.dumps(patching))
    write_graph(token_flow(model, data.tokens[:1], "rollout").graph, tmp_path / "flow.json")
    page = build_report(checkpoint, roles=tmp_path / "roles.json", patching=tmp_path / "patching.json",
                        flow=tmp_path / "flow.json", options=SMALL)
    write_page(page, tmp_path / "report.html")
    dom = rendered_dom(tmp_path / "report.html")
    assert 'id="patching"' in dom and "L1H2" in dom and "rollout relevance" in dom
    assert f"patching file</td><td>{tmp_path / 'patching.json'} (sha256 " in dom
    write_page(page, tmp_path / "report.pdf")
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF")
    assert ink_fraction(pdf_to_png(tmp_path / "report.pdf")) > 0.01
    (tmp_path / "bad.json").write_text('{"model": "x"}')
    with pytest.raises(InputError, match="no \"results\" list"):
        build_report(checkpoint, ablation=tmp_path / "bad.json", options=SMALL)
    with pytest.raises(InputError, match="a page is written as .html or .pdf"):
        write_page(page, tmp_path / "report.txt")


def test_the_default_prompt_falls_back_for_a_vocabulary_without_its_words_and_a_given_one_is_refused():
    """The toy model's tokenizer knows t0..t63 only: the report's default IOI sentence gives way to a
    repeated-random prompt, while a prompt the user typed in words it lacks is an error, not a silent swap."""
    from headscope.loading.load import load_model
    from headscope.viz.report import _prompt_tokens

    toy = load_model("toy-induction-2l")
    tokens = _prompt_tokens(toy, ReportOptions())
    assert tokens.shape[0] == 1 and len(set(tokens[0].tolist())) > 2
    assert torch.equal(_prompt_tokens(toy, ReportOptions(prompt="t1 t2 t3 t1")), toy.to_tokens("t1 t2 t3 t1"))
    with pytest.raises(InputError, match="not in the tokenizer's vocabulary"):
        _prompt_tokens(toy, ReportOptions(prompt="When Mary left"))
