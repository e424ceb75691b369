"""Two gloo processes under torchrun give the single-process results; a failing rank fails the whole run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from headscope import distributed
from headscope.capture import CaptureResult, capture, repeated_random_tokens
from headscope.cli import cli
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS


def torchrun(*args: str, processes: int = 2, timeout_s: int = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m headscope ARGS`, as a user launches it."""
    env = os.environ | {"OMP_NUM_THREADS": "1", distributed.TIMEOUT_ENV: str(timeout_s)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "headscope", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def one_process(*args: str) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output


def assert_close(ours: float, reference: float) -> None:
    assert ours == pytest.approx(reference, rel=1e-6, abs=1e-9)


def test_shards_cover_every_prompt_once_with_sizes_within_one():
    for n, world in ((6, 2), (7, 3), (2, 2), (100, 8)):
        shards = [distributed.shard(n, r, world) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_capture_classify_and_sweep_under_torchrun_equal_one_process(tmp_path):
    runs = {
        "capture": ["capture", "toy-induction-2l", "--num-prompts", "7", "--out"],
        "classify": ["classify", "toy-induction-2l", "--num-prompts", "7", "--json"],
        "sweep": ["ablate", "toy-induction-2l", "--sweep", "head", "--method", "mean", "--num-prompts", "5",
                  "--metric", "induction-loss", "--json"],
    }
    for name, args in runs.items():
        launched = torchrun(*args, str(tmp_path / f"{name}-2"))
        assert launched.returncode == 0, launched.stderr[-3000:]
        one_process(*args, str(tmp_path / f"{name}-1"))

    one, two = (CaptureResult.load(tmp_path / f"capture-{n}" / "stats.safetensors") for n in (1, 2))
    assert two.meta["processes"] == 2 and one.meta["processes"] == 1
    for stat in one.statistics:
        assert torch.equal(one.counts[stat], two.counts[stat])
        assert torch.allclose(two.sums[stat], one.sums[stat], rtol=1e-6, atol=1e-9)

    one, two = (json.loads((tmp_path / f"classify-{n}").read_text()) for n in (1, 2))
    for head_one, head_two in zip(one["results"], two["results"], strict=True):
        assert head_one["roles"] == head_two["roles"]
        for role, score in head_one["scores"].items():
            assert_close(head_two["scores"][role], score)
        assert (head_one["copying"] is None) == (head_two["copying"] is None)
        if head_one["copying"] is not None:
            assert_close(head_two["copying"], head_one["copying"])
    assert any("induction" in head["roles"] for head in two["results"])

    one, two = (json.loads((tmp_path / f"sweep-{n}").read_text()) for n in (1, 2))
    assert two["meta"]["processes"] == 2 and len(two["results"]) == 8
    for effect_one, effect_two in zip(one["results"], two["results"], strict=True):
        assert effect_one["heads"] == effect_two["heads"]
        assert_close(effect_two["value"], effect_one["value"])
        assert effect_two["ci"] == pytest.approx(effect_one["ci"], rel=1e-6, abs=1e-9)


def test_a_failing_rank_fails_every_rank_and_a_rerun_recounts_no_finished_shard(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "progress.rank1of2.safetensors").write_text("not a capture")  # rank 1 cannot resume from this
    args = ("capture", "toy-induction-2l", "--num-prompts", "6", "--out", str(out))
    failed = torchrun(*args)
    assert failed.returncode != 0
    assert "[rank 0] rank 1 of 2 failed" in failed.stderr and "not a headscope progress file" in failed.stderr
    assert not (out / "stats.json").exists()
    finished = load_file(out / "progress.rank0of2.safetensors")  # rank 0's shard waits, complete
    assert finished["count/induction"].shape == (3,)

    (out / "progress.rank1of2.safetensors").unlink()
    again = torchrun(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    result = json.loads((out / "stats.json").read_text())
    assert result["meta"]["resumed_prompts"] == 3  # rank 0 took its shard from the file
    assert not list(out.glob("progress*"))
    one_process(*args[:-1], str(tmp_path / "single"))
    single = json.loads((tmp_path / "single" / "stats.json").read_text())
    for ours, reference in zip(result["results"], single["results"], strict=True):
        for key, value in reference.items():
            if isinstance(value, float):
                assert_close(ours[key], value)


def test_a_stuck_rank_makes_the_others_give_up_after_the_timeout(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "progress.rank1of2.safetensors")  # reading it blocks forever, as a dead network mount would
    stuck = torchrun("capture", "toy-induction-2l", "--num-prompts", "6", "--out", str(out), timeout_s=8)
    assert stuck.returncode != 0
    assert "[rank 0] rank 0 of 2: the other processes did not answer within 8 s" in stuck.stderr
    assert not (out / "stats.json").exists()


def test_a_sweep_resumes_each_ranks_finished_variants(tmp_path):
    progress = tmp_path / "sweep.safetensors"
    (tmp_path / "sweep.rank1of2.safetensors").write_text("not a sweep")
    args = ["ablate", "toy-induction-2l", "--sweep", "head", "--num-prompts", "4", "--resume", str(progress),
            "--json"]
    failed = torchrun(*args, str(tmp_path / "two.json"))
    assert failed.returncode != 0 and "rank 1 of 2 failed" in failed.stderr
    assert len(load_file(tmp_path / "sweep.rank0of2.safetensors")) == 4  # rank 0's four heads, finished
    (tmp_path / "sweep.rank1of2.safetensors").unlink()
    again = torchrun(*args, str(tmp_path / "two.json"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(tmp_path.glob("sweep*"))
    one_process(*args[:-3], "--json", str(tmp_path / "one.json"))
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    for effect_one, effect_two in zip(one["results"], two["results"], strict=True):
        assert_close(effect_two["value"], effect_one["value"])


def _api_rank(rank: int, folder: str) -> None:
    """One of two gloo processes: the Python API picks the group up by itself; what it saw goes to a file."""
    import torch.distributed as dist

    from headscope.analysis.ablation import sweep

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["llama-gqa"]).eval()
    data = repeated_random_tokens(5, 6, vocab_size=99, seed=0, bos_token_id=98, exclude_ids=[98])
    shared = capture(model, data, progress=False)  # split across both processes
    alone = capture(model, data, progress=False, distributed=False)
    assert shared.meta["processes"] == 2 and alone.meta["processes"] == 1
    for stat in alone.statistics:
        assert torch.allclose(shared.sums[stat], alone.sums[stat], rtol=1e-6, atol=1e-9)
    split = [e.value for e in sweep(model, data, "resample", "kl", n_bootstrap=10).effects]
    whole = [e.value for e in sweep(model, data, "resample", "kl", n_bootstrap=10, distributed=False).effects]
    assert split == pytest.approx(whole, rel=1e-6, abs=1e-9)
    other = repeated_random_tokens(5, 6, vocab_size=99, seed=rank, bos_token_id=98, exclude_ids=[98])
    with pytest.raises(distributed.DistributedError, match="rank 1 was given another dataset than rank 0"):
        sweep(model, other, "zero", "loss", n_bootstrap=10)
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps({"processes": shared.meta["processes"]}))
    dist.destroy_process_group()


def test_the_python_api_splits_work_in_an_initialised_group_and_refuses_different_datasets(tmp_path):
    torch.multiprocessing.spawn(_api_rank, args=(str(tmp_path),), nprocs=2)  # a failed assert there fails here
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"processes": 2}


def test_commands_that_are_not_split_refuse_a_launcher_and_the_api_asks_for_a_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["pattern", "toy-induction-2l", "L1H0", "--text", "a", "--html", "x.html"])
    assert result.exit_code == 1 and "`headscope pattern` does not run across processes" in result.output
    monkeypatch.delenv("WORLD_SIZE")
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    data = repeated_random_tokens(2, 4, vocab_size=99, seed=0)
    with pytest.raises(distributed.DistributedError, match="needs an initialised process group"):
        capture(model, data, ["induction"], distributed=True, progress=False)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL, one GPU per process)")
def test_two_gpus_under_torchrun_equal_one_gpu(tmp_path):
    args = ["capture", "toy-induction-2l", "--device", "cuda", "--num-prompts", "8", "--out"]
    launched = torchrun(*args, str(tmp_path / "two"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    one_process(*args, str(tmp_path / "one"))
    one, two = (CaptureResult.load(tmp_path / n / "stats.safetensors") for n in ("one", "two"))
    for stat in one.statistics:
        assert torch.allclose(two.sums[stat], one.sums[stat], rtol=1e-5, atol=1e-7)


def test_a_bad_timeout_is_one_clear_line(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(distributed.DistributedError, match="must be a positive number of seconds, not 'soon'"):
        distributed.timeout_s()
