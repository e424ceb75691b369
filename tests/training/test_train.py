"""Training: induction heads form and are found; runs are deterministic; resumed runs end where
uninterrupted ones do; bad input is refused."""

import shutil

import pytest
import torch

from headscope.analysis import classify_heads
from headscope.capture.datasets import repeated_random_tokens
from headscope.errors import InputError
from headscope.loading.checkpoint import load_checkpoint
from headscope.training import TrainConfig, train


def test_a_two_layer_model_grows_an_induction_head_that_classify_finds():
    result = train(TrainConfig(eval_every=400, checkpoint_every=800, seed=0), progress=False)  # 800 steps, ~7 s
    probe = repeated_random_tokens(16, 16, vocab_size=64, seed=7, bos_token_id=64)
    table = classify_heads(result.model, probe, n_bootstrap=200)
    induction = [(r.layer, r.head) for r in table.with_role("induction")]
    previous = [(r.layer, r.head) for r in table.with_role("previous_token")]
    assert induction and all(layer == 1 for layer, _ in induction)
    assert previous and all(layer == 0 for layer, _ in previous)
    assert result.log[-1]["icl_score"] < -1.0  # late tokens are far easier than early ones
    assert max(result.log[-1]["induction"][1]) > 0.8


def test_training_is_deterministic_for_a_seed():
    """Same data and updates; PyTorch's parallel CPU kernels may sum in another order (weights ~1e-7)."""
    cfg = TrainConfig(steps=40, eval_every=20, checkpoint_every=40, seed=3)
    first, second = train(cfg, progress=False), train(cfg, progress=False)
    assert [e["loss"] for e in first.log] == pytest.approx([e["loss"] for e in second.log], abs=1e-6)
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    other = train(TrainConfig(steps=40, eval_every=20, checkpoint_every=40, seed=4), progress=False)
    assert other.log[-1]["loss"] != pytest.approx(first.log[-1]["loss"], abs=1e-6)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    cfg = TrainConfig(steps=60, eval_every=30, checkpoint_every=30, seed=1)
    whole = train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "cut", progress=False)
    # The run is "killed" after its step-30 checkpoint, in the middle of writing step 60.
    shutil.rmtree(tmp_path / "cut" / "step-000060")
    (tmp_path / "cut" / ".tmp-step-000060").mkdir()
    assert load_checkpoint(tmp_path / "cut" / "step-000030").config == cfg.model_config()
    resumed = train(cfg, tmp_path / "cut", progress=False)
    assert [e["loss"] for e in resumed.log] == pytest.approx([e["loss"] for e in whole.log], abs=1e-6)
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(InputError, match="steps must be a positive integer, got 0"):
        TrainConfig(steps=0)
    with pytest.raises(InputError, match="steps must be a positive integer, got -5"):
        TrainConfig(steps=-5)
    with pytest.raises(InputError, match="must hold two periods"):
        TrainConfig(seq_len=10, max_period=16)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="is not a headscope training folder"):
        train(TrainConfig(steps=5), foreign, progress=False)
    train(TrainConfig(steps=5, eval_every=5, checkpoint_every=5), tmp_path / "run", progress=False)
    with pytest.raises(InputError, match="another configuration"):
        train(TrainConfig(steps=5, eval_every=5, checkpoint_every=5, seed=9), tmp_path / "run", progress=False)


def test_byte_level_training_on_a_corpus_folder_and_an_empty_one(tmp_path):
    from headscope.training.tokenizers import byte_tokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def add(a, b):\n    return a + b\n" * 20)
    (corpus / "notes.txt").write_text("the cat sat on the mat\n" * 20)
    cfg = TrainConfig(data="stdlib", corpus_dir=str(corpus), vocab=256, seq_len=32, steps=20, eval_every=20,
                      checkpoint_every=20)
    result = train(cfg, progress=False)
    assert result.log[-1]["loss"] < 5.5 and result.model.cfg.d_vocab == 257
    tokenizer = byte_tokenizer()
    assert tokenizer.encode("ab\n", prepend_bos=True) == [256, 97, 98, 10]
    assert tokenizer.decode([104, 195, 169]) == "hé"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.py").write_text("\n\n")
    with pytest.raises(InputError, match="has no .py or .txt text to train on"):
        train(TrainConfig(data="stdlib", corpus_dir=str(empty), vocab=256, steps=5), progress=False)
    assert TrainConfig(data="stdlib").vocab == 256 and TrainConfig().vocab == 64  # derived from the data
    with pytest.raises(InputError, match="vocab must be 256"):
        TrainConfig(data="stdlib", vocab=64)


def test_the_train_command_writes_checkpoints_that_classify_reads(tmp_path):
    from click.testing import CliRunner

    from headscope.cli import cli

    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(out), "--steps", "30", "--eval-every", "15", "--checkpoint-every", "15"])
    assert result.exit_code == 0, result.output
    assert "in-context-learning score" in result.stdout and (out / "step-000030" / "config.json").exists()
    assert runner.invoke(cli, ["classify", str(out / "step-000030"), "--num-prompts", "4"]).exit_code == 0
    bad = runner.invoke(cli, ["train", str(tmp_path / "other"), "--steps", "0"])
    assert bad.exit_code == 1 and "steps must be a positive integer, got 0" in bad.output


def test_a_batch_is_bos_then_a_random_segment_repeated_row_by_row():
    """The batch against the slow construction it replaced: each row's period and segment drawn in turn
    from the step's generator, the segment repeated to fill the row (so seeds give the data they gave)."""
    from headscope.training.train import training_batch

    cfg = TrainConfig(seed=5, vocab=30, min_period=3, max_period=15, seq_len=33)
    for step in (-1, 1, 77):
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        rows = []
        for _ in range(cfg.batch_size):
            period = int(torch.randint(cfg.min_period, cfg.max_period + 1, (1,), generator=generator))
            segment = torch.randperm(cfg.vocab, generator=generator)[:period]
            rows.append([cfg.vocab] + [int(segment[j % period]) for j in range(cfg.seq_len)])
        assert training_batch(cfg, step).tolist() == rows


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_follows_the_cpu_run():
    """Same batches (drawn on the CPU), pinned and copied without waiting; sums in another order."""
    cfg = TrainConfig(steps=40, eval_every=20, checkpoint_every=40, seed=3)
    cpu, gpu = train(cfg, progress=False), train(cfg, progress=False, device="cuda")
    assert [e["loss"] for e in gpu.log] == pytest.approx([e["loss"] for e in cpu.log], abs=2e-3)
    assert next(gpu.model.parameters()).device.type == "cuda"
