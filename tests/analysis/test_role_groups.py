"""GQA groups in role tables and figures: heads sharing a key/value head are marked as one group."""

import csv
import io
import json

import pytest
import torch

from headscope.analysis import RoleTable, classify_heads
from headscope.viz import role_heatmap
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def gqa_table() -> RoleTable:
    """llama-gqa (4 query heads, 2 key/value heads) with K/V head 0's keys zeroed in every layer: the query
    heads that read it score every key alike, so they attend uniformly and nothing else does."""
    model = build_tiny_model("llama-gqa")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_K[0].zero_()
            if block.attn.cfg.attn_bias:
                block.attn.b_K[0].zero_()
    return classify_heads(model, seq_len=24, num_prompts=6, n_bootstrap=50)


def test_heads_sharing_a_key_value_head_are_one_group(gqa_table):
    uniform = {h.name for h in gqa_table.heads
               if all(h.scores[r] == pytest.approx(h.nulls[r], abs=1e-6) for r in ("previous_token", "self", "local"))}
    in_group_0 = {h.name for h in gqa_table.heads if h.kv_group == 0}
    assert uniform == in_group_0 == {"L0H0", "L0H1", "L1H0", "L1H1"}
    assert [h.kv_group for h in gqa_table.heads] == [0, 0, 1, 1] * 2
    assert gqa_table.kv_group_size == 2 and gqa_table.meta["n_kv_heads"] == 2
    data = json.loads(gqa_table.to_json())
    assert [row["kv_group"] for row in data["results"]] == [0, 0, 1, 1] * 2
    assert RoleTable.from_json(gqa_table.to_json()) == gqa_table
    rows = list(csv.DictReader(io.StringIO(gqa_table.to_csv())))
    assert [int(r["kv_group"]) for r in rows] == [0, 0, 1, 1] * 2


def test_the_heatmap_separates_groups_and_names_them_in_the_hover(gqa_table):
    figure = role_heatmap(gqa_table)
    lines = [s for s in figure.layout.shapes if s.type == "line"]
    assert len(lines) == len(gqa_table.roles) and {s.x0 for s in lines} == {1.5}
    assert all("kv group %{customdata[3]" in t.hovertemplate for t in figure.data)
    assert {float(g) for g in figure.data[0].customdata[..., 3].ravel()} == {0.0, 1.0}
    caption = " ".join(a.text.replace("<br>", " ") for a in figure.layout.annotations)
    assert "groups of 2 heads sharing a key/value head" in caption


def test_without_gqa_every_head_is_its_own_group():
    table = classify_heads(build_tiny_model("gpt2"), seq_len=16, num_prompts=4, n_bootstrap=20)
    assert [h.kv_group for h in table.heads] == [0, 1, 2, 3] * 2 and table.kv_group_size == 1
    figure = role_heatmap(table)
    assert not [s for s in figure.layout.shapes if s.type == "line"]
    assert "kv group" not in figure.data[0].hovertemplate
    legacy = json.loads(table.to_json())
    for row in legacy["results"]:
        del row["kv_group"]  # a table written before the field existed
    assert RoleTable.from_json(json.dumps(legacy)).kv_group_size is None
