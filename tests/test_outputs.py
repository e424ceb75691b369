"""Outputs are strict JSON (null, never NaN) and every file is written with the same permissions."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
from click.testing import CliRunner

from headscope.cli import cli
from headscope.errors import InputError
from headscope.io import atomic_path, strict_json


def _strict_load(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_strict_json_writes_null_for_nan_and_infinities():
    text = strict_json({"a": math.nan, "b": [1.5, -math.inf, {"c": math.inf}], "d": (2, None)})
    assert _strict_load(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2, None]}


def test_strict_json_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError):
        strict_json({"a": object()})


def test_capture_on_one_token_prompts_writes_strict_json_and_0644_files(tmp_path):
    prompts = tmp_path / "one.txt"
    prompts.write_text("t1\nt2\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["capture", "toy-induction-2l", "--dataset", str(prompts), "--patterns", "L1H0",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    stats = _strict_load((out / "stats.json").read_text())
    # one content token: no previous token to attend to, so its mean is missing -- null, not NaN
    assert any(v is None for row in stats["results"] for v in row.values())
    umask = os.umask(0)
    os.umask(umask)
    for name in ("stats.json", "stats.safetensors", "patterns.safetensors"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_classify_and_ablate_json_are_strict(tmp_path):
    roles, effects = tmp_path / "roles.json", tmp_path / "a.json"
    assert CliRunner().invoke(cli, ["classify", "--num-prompts", "2", "--json", str(roles)]).exit_code == 0
    assert CliRunner().invoke(cli, ["ablate", "--heads", "L1H0", "--num-prompts", "2", "--json", str(effects)]).exit_code == 0
    for path in (roles, effects):
        meta = _strict_load(path.read_text())["meta"]
        assert {"model_source", "model_sha256", "weights_sha256", "headscope_version", "command"} <= set(meta)


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="does not exist"), atomic_path(tmp_path / "no" / "x.json"):
        pass
