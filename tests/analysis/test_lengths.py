"""Roles across context lengths on the shipped toy model: one classification per length, equal to a
classification at that length alone; the length figure and page; refusals before any work."""

import dataclasses
import csv
import io
import json

import pytest
import torch

from headscope import load_model
from headscope.analysis import classify_heads
from headscope.analysis.lengths import LengthSweep, classify_across_lengths
from headscope.capture.datasets import dataset_for_model
from headscope.errors import InputError
from headscope.viz import length_figure, length_page, write_image, write_page
from tests.viz.readback import rendered_dom, texts_outside_canvas

LENGTHS = (8, 16, 40)  # the toy model's context is 41 positions: 40 tokens and BOS


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-induction-2l")


@pytest.fixture(scope="module")
def sweep(toy) -> LengthSweep:
    return classify_across_lengths(toy, LENGTHS, num_prompts=6, n_bootstrap=50)


def without_command(table_json: str) -> dict:
    data = json.loads(table_json)
    data["meta"].pop("command")
    return data


def test_each_length_is_the_classification_at_that_length_alone(toy, sweep):
    assert sweep.seq_lens == LENGTHS and [t.meta["seq_len"] for t in sweep.tables] == [n + 1 for n in LENGTHS]  # BOS
    for length, table in zip(LENGTHS, sweep.tables):
        alone = classify_heads(toy, dataset_for_model(toy, "repeated-random", seq_len=length, num_prompts=6),
                               n_bootstrap=50)
        assert without_command(table.to_json()) == without_command(alone.to_json()), length
    scores = sweep.scores()
    assert scores.shape == (3, 2, 4)
    assert torch.equal(scores[1], torch.tensor([[h.scores["induction"] for h in sweep.tables[1].heads]], dtype=torch.float64).view(2, 4))
    # the toy model was trained to copy with its second layer: its layer-1 heads are the induction heads
    for table in sweep.tables:
        assert {h.name for h in table.with_role("induction")} == {"L1H0", "L1H1", "L1H2", "L1H3"}


def test_the_sweep_records_time_and_memory_and_reads_back(sweep):
    per_length = sweep.meta["per_length"]
    assert [entry["seq_len"] for entry in per_length] == list(LENGTHS)
    assert all(entry["seconds"] > 0 and isinstance(entry["peak_memory_bytes"], int) for entry in per_length)
    assert all(entry["memory"] == "process resident memory, sampled" for entry in per_length)
    data = json.loads(sweep.to_json())
    assert {"model", "role", "seq_lens", "results", "tables", "meta"} == set(data)
    top = data["results"][0]
    assert top["heads"][0].startswith("L1") and set(top["scores"]) == {"8", "16", "40"} and top["held"] == [8, 16, 40]
    assert LengthSweep.from_json(sweep.to_json()) == sweep
    rows = list(csv.DictReader(io.StringIO(sweep.to_csv())))
    assert len(rows) == 8 and float(rows[0]["induction_16"]) == top["scores"]["16"]
    assert {r["name"]: r["held_40"] for r in rows}["L0H0"] == "0"
    with pytest.raises(InputError, match="not a headscope length sweep"):
        LengthSweep.from_json('{"model": "x"}')


def test_bad_lengths_are_refused_before_any_work(toy):
    forwards = []
    with toy.hooks([("hook_embed", lambda t, hook: forwards.append(1))]):
        with pytest.raises(InputError, match="do not fit the model's context of 41 positions"):
            classify_across_lengths(toy, [8, 64])
        with pytest.raises(InputError, match="a length twice"):
            classify_across_lengths(toy, [8, 8])
        with pytest.raises(InputError, match="integers of at least 4"):
            classify_across_lengths(toy, [2, 8])
        with pytest.raises(InputError, match="role sep cannot be scored on .*: it applies to encoder models only"):
            classify_across_lengths(toy, [8, 16], role="sep")
        with pytest.raises(InputError, match="unknown role 'inductoin'"):
            classify_across_lengths(toy, [8, 16], role="inductoin")
    assert not forwards


def test_the_length_figure_and_page(sweep, tmp_path):
    figure = length_figure(sweep, top=3)
    strong = [t for t in figure.data if t.showlegend]
    assert [t.name for t in strong] == [r["heads"][0] for r in sweep.rows()[:3]] and len(figure.data) == 8
    assert list(strong[0].x) == list(LENGTHS) and figure.layout.xaxis.type == "log"
    assert figure.layout.shapes[0].y0 == pytest.approx(0.4)  # the induction threshold
    write_image(length_figure(sweep, style="single"), tmp_path / "lengths.svg")
    assert texts_outside_canvas(tmp_path / "lengths.svg") == []
    write_page(length_page(sweep), tmp_path / "lengths.html")
    dom = rendered_dom(tmp_path / "lengths.html")
    assert dom.count('class="main-svg"') >= 1 + len(LENGTHS), "the page did not draw its figures"
    assert "cdn.plot.ly" not in (tmp_path / "lengths.html").read_text()[:2000]


def test_the_caption_says_how_many_prompts_each_length_had(sweep):
    """One count when every length had the same prompts; each length's count when they differ (a long length
    run on fewer prompts must not be captioned with the others' count)."""
    def caption(meta):
        figure = length_figure(dataclasses.replace(sweep, meta=meta))
        return " ".join(a.text for a in figure.layout.annotations)

    same = [{"seq_len": n, "seconds": 1.0} for n in LENGTHS]
    assert "3 prompts per length; " in caption({**sweep.meta, "num_prompts": 3, "per_length": same})
    mixed = [{**entry, "num_prompts": 1 if n == len(same) - 1 else 4} for n, entry in enumerate(same)]
    text = caption({**sweep.meta, "num_prompts": 4, "per_length": mixed})
    assert ", ".join(["4"] * (len(same) - 1) + ["1"]) + " prompts at these lengths" in text
    assert "prompts per length" not in text
