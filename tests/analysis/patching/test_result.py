"""The patching result: JSON round trip in the shared vocabulary, strict JSON, a short repr, figures by data."""

import json
import math

import pytest

from headscope.analysis.patching.exact import patch, patch_sweep
from headscope.analysis.patching.result import PatchResult
from headscope.viz.patching import patching_figure
from tests.analysis.patching.conftest import make_pairs, tiny


def test_json_round_trip_and_vocabulary():
    model, pairs = tiny("gpt2"), make_pairs()
    result = patch_sweep(model, pairs, "head", metric="normalized-logit-diff", n_bootstrap=10)
    data = json.loads(result.to_json())
    assert set(data) == {"model", "kind", "method", "metric", "clean", "corrupted", "results", "meta"}
    assert data["kind"] == "head" and data["method"] == "exact" and data["metric"] == "normalized-logit-diff"
    assert data["clean"] == pytest.approx(1.0, abs=1e-5) and data["corrupted"] == pytest.approx(0.0, abs=1e-5)
    first = data["results"][0]
    assert first["heads"] == ["L0H0"] and first["positions"] is None and len(first["ci"]) == 2
    assert first["normalized"] == pytest.approx(first["value"], abs=1e-4)  # the metric is already normalised
    assert {"denoise", "n_pairs", "seed", "headscope_version"} <= set(data["meta"])
    again = PatchResult.from_json(result.to_json())
    assert again == result
    assert len(repr(result)) < 200 and "head, exact, normalized-logit-diff" in repr(result)
    grid = result.grid(2, 4)
    assert grid[0, 0] == pytest.approx(result.effects[0].value)


def test_equal_runs_have_no_normalised_value_and_json_stays_strict():
    model, pairs = tiny("gpt2"), make_pairs()
    same = type(pairs)(pairs.clean, pairs.clean, pairs.answers, pairs.wrongs)
    result = patch(model, same, [(0, 1)], n_bootstrap=10)
    assert result.effects[0].normalized is None
    assert "NaN" not in result.to_json() and json.loads(result.to_json())["results"][0]["normalized"] is None


def test_figures_show_the_values():
    model, pairs = tiny("gpt2"), make_pairs()
    heads = patch_sweep(model, pairs, "head", n_bootstrap=10)
    fig = patching_figure(heads)
    assert fig.data[0].z[1][2] == pytest.approx(heads.effects[6].normalized)
    resid = patch_sweep(model, pairs, "resid", n_bootstrap=10)
    grid = patching_figure(resid, tokens=[f"t{i}" for i in range(7)]).data[0].z
    assert len(grid) == 2 and len(grid[0]) == 7 and grid[1][3] == pytest.approx(resid.effects[7 + 3].normalized)
    bars = patching_figure(patch(model, pairs, [(0, 1), (1, 1)], n_bootstrap=10))
    assert list(bars.data[0].x) == ["L0H1,L1H1"] and not math.isnan(bars.data[0].y[0])
