"""The fused capture path equals the explicit reference; batching and budgets never change results."""

import dataclasses
import sys
import weakref

import pytest
import torch

from headscope.capture.datasets import from_tensor, repeated_random_tokens
from headscope.capture.engine import capture, statistics_from_patterns
from headscope.capture.statistics import CAUSAL_STATISTICS, STATISTICS
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from headscope.progress import ProgressFile
from tests.conftest import TINY_CONFIGS


def natural_like_tokens(n_prompts=3, n_pos=24, vocab=12, seed=0):
    """Random tokens from a small vocabulary: many duplicates, some adjacent, like real text."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n_prompts, n_pos), generator=g)


def assert_same_result(a, b, atol=1e-5):
    assert a.statistics == b.statistics
    for name in a.statistics:
        torch.testing.assert_close(a.counts[name], b.counts[name])
        torch.testing.assert_close(a.sums[name], b.sums[name], atol=atol * max(1, int(a.counts[name].max())), rtol=0)
        torch.testing.assert_close(a.mean(name), b.mean(name), atol=atol, rtol=0, equal_nan=True)


def statistics_for(model):
    return CAUSAL_STATISTICS if model.cfg.causal else STATISTICS


@torch.no_grad()
def test_fused_equals_explicit_on_every_architecture(tiny_model):
    dataset = from_tensor(natural_like_tokens())
    names = statistics_for(tiny_model)
    fused = capture(tiny_model, dataset, names, progress=False)
    explicit = capture(tiny_model, dataset, names, method="explicit", progress=False)
    assert_same_result(fused, explicit)


@torch.no_grad()
def test_fused_equals_explicit_with_padding_and_bos(tiny_model):
    tokens = natural_like_tokens(n_prompts=4, n_pos=20, seed=1)
    tokens[:, 0] = 0  # a BOS id that appears nowhere else
    tokens[:, 1:] = tokens[:, 1:].clamp(min=1)
    mask = torch.ones_like(tokens)
    mask[1, 14:] = 0
    mask[3, 5:] = 0
    dataset = from_tensor(tokens, attention_mask=mask, has_bos=True)
    names = statistics_for(tiny_model)
    fused = capture(tiny_model, dataset, names, progress=False)
    explicit = capture(tiny_model, dataset, names, method="explicit", progress=False)
    assert_same_result(fused, explicit)


@torch.no_grad()
def test_fused_equals_explicit_on_many_shapes():
    for n_pos, n_kv in [(1, 4), (2, 2), (7, 1), (33, 2), (70, 4)]:
        torch.manual_seed(n_pos)
        cfg = dataclasses.replace(TINY_CONFIGS["llama-gqa"], n_kv_heads=n_kv, n_ctx=128)
        model = HookedTransformer(cfg).eval()
        dataset = from_tensor(natural_like_tokens(n_prompts=2, n_pos=n_pos, seed=n_pos))
        fused = capture(model, dataset, CAUSAL_STATISTICS, progress=False)
        explicit = capture(model, dataset, CAUSAL_STATISTICS, method="explicit", progress=False)
        assert_same_result(fused, explicit)


def one_hot_induction_hooks(tokens: torch.Tensor, strength: float = 60.0):
    """hook_q / hook_k replacements that make every head attend to each query's induction target."""
    n_pos = tokens.shape[1]

    def target_of(i: int, row: torch.Tensor) -> int | None:
        earlier = [j for j in range(i) if row[j] == row[i]]
        return earlier[-1] + 1 if earlier else None

    def set_q(q, hook):
        q = torch.zeros_like(q)
        for b in range(tokens.shape[0]):
            for i in range(n_pos):
                j = target_of(i, tokens[b])
                if j is not None:
                    q[b, i, :, j] = strength
        return q

    def set_k(k, hook):
        k = torch.zeros_like(k)
        for j in range(n_pos):
            k[:, j, :, j] = 1.0
        return k

    return [(lambda n: n.endswith("attn.hook_q"), set_q), (lambda n: n.endswith("attn.hook_k"), set_k)]


@pytest.mark.parametrize("method", ["fused", "explicit"])
@torch.no_grad()
def test_a_hand_made_induction_pattern_scores_near_one(method):
    cfg = dataclasses.replace(TINY_CONFIGS["attn-only"], d_head=48, d_model=64, n_ctx=64)
    model = HookedTransformer(cfg).eval()
    dataset = repeated_random_tokens(n_prompts=3, period=20, repeats=2, vocab_size=99, seed=0)
    with model.hooks(one_hot_induction_hooks(dataset.tokens)):
        result = capture(model, dataset, ["induction", "previous_token", "duplicate_token"], method=method,
                         progress=False)
    assert result.count("induction") == 3 * 20  # only the second period has earlier occurrences
    assert result.mean("induction").min() > 0.99
    assert result.mean("duplicate_token").max() < 0.01
    assert result.mean("previous_token").max() < 0.6  # uniform rows in the first period, ~0 in the second


@torch.no_grad()
def test_dataset_result_is_the_mean_of_per_prompt_results():
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    dataset = from_tensor(natural_like_tokens(n_prompts=4, seed=3))
    whole = capture(model, dataset, progress=False)
    singles = [capture(model, dataset.subset([i]), progress=False) for i in range(len(dataset))]
    for name in whole.statistics:
        per_prompt = torch.stack([s.mean(name) for s in singles])
        torch.testing.assert_close(whole.per_prompt(name), per_prompt, atol=1e-6, rtol=0)
        counts = torch.tensor([s.count(name) for s in singles], dtype=torch.float64)
        expected = (per_prompt * counts[:, None, None]).sum(0) / counts.sum()
        torch.testing.assert_close(whole.mean(name), expected, atol=1e-6, rtol=0)


@torch.no_grad()
def test_memory_budget_batching_gives_identical_results():
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["llama-gqa"]).eval()
    dataset = from_tensor(natural_like_tokens(n_prompts=5, seed=4))
    one_batch = capture(model, dataset, batch_size=5, progress=False)
    tiny_budget = capture(model, dataset, max_memory=1, progress=False)  # forces one prompt per batch
    assert_same_result(one_batch, tiny_budget, atol=1e-7)


def test_bad_requests_are_clear_errors():
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    dataset = from_tensor(natural_like_tokens(n_prompts=1))
    with pytest.raises(InputError, match="unknown statistic 'previous'; choose from previous_token"):
        capture(model, dataset, ["previous"], progress=False)
    assert capture(model, dataset, ["prev", "sink"], progress=False).statistics == ("previous_token", "attention_sink")
    with pytest.raises(InputError, match="next_token needs a bidirectional"):
        capture(model, dataset, ["next_token"], progress=False)
    with pytest.raises(InputError, match="unknown capture method"):
        capture(model, dataset, method="magic", progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_gpu_path_equals_cpu_path():
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["llama-gqa"]).eval()
    dataset = from_tensor(natural_like_tokens(n_prompts=3, n_pos=40, seed=5))
    cpu = capture(model, dataset, progress=False)
    gpu = capture(model, dataset, device="cuda", progress=False)
    assert_same_result(cpu, gpu, atol=1e-5)


class Interrupt(Exception):
    pass


@torch.no_grad()
def test_an_interrupted_capture_resumes_where_it_stopped(tmp_path):
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    dataset = from_tensor(natural_like_tokens(n_prompts=5, seed=6))
    uninterrupted = capture(model, dataset, batch_size=1, patterns="L1H0", pattern_prompts=[0, 4], progress=False)
    progress_file = tmp_path / "progress.safetensors"
    forwards = []

    def count_and_stop_at_third(tensor, hook):
        forwards.append(1)
        if len(forwards) == 3:
            raise Interrupt

    with pytest.raises(Interrupt), model.hooks([("hook_embed", count_and_stop_at_third)]):
        capture(model, dataset, batch_size=1, resume=progress_file, save_every_s=0, progress=False)
    assert progress_file.exists()  # holds the two prompts finished before the interruption
    forwards.clear()
    with model.hooks([("hook_embed", lambda t, hook: forwards.append(1))]):
        resumed = capture(model, dataset, batch_size=1, resume=progress_file, save_every_s=0,
                          patterns="L1H0", pattern_prompts=[0, 4], progress=False)
    assert len(forwards) == 3 + 1  # prompts 2, 3, 4, then prompt 0 again only for its pattern
    assert_same_result(uninterrupted, resumed, atol=1e-9)
    torch.testing.assert_close(resumed.patterns.patterns[("L1H0", 0)], uninterrupted.patterns.patterns[("L1H0", 0)])
    assert not progress_file.exists()


def test_a_progress_file_of_another_run_is_refused(tmp_path):
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    progress_file = tmp_path / "progress.safetensors"
    first = capture(model, from_tensor(natural_like_tokens(n_prompts=2, seed=1)), progress=False)
    ProgressFile(progress_file, "another run", keep_finished=True).save(
        lambda: (first.tensors(), {"statistics": list(first.statistics)}), final=True)
    with pytest.raises(InputError, match="holds the progress of another run"):
        capture(model, from_tensor(natural_like_tokens(n_prompts=2, seed=1)), resume=progress_file, progress=False)


@torch.no_grad()
def test_statistics_from_cached_patterns_equal_capture(tiny_model):
    dataset = from_tensor(natural_like_tokens(seed=9))
    names = statistics_for(tiny_model)
    _, cache = tiny_model.run_with_cache(dataset.tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = [cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(tiny_model.cfg.n_layers)]
    from_cache = statistics_from_patterns(patterns, dataset, names, causal=tiny_model.cfg.causal)
    assert_same_result(capture(tiny_model, dataset, names, progress=False), from_cache)


@torch.no_grad()
def test_out_of_memory_halves_the_batch_and_retries(monkeypatch):
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    dataset = from_tensor(natural_like_tokens(n_prompts=5, seed=7))
    expected = capture(model, dataset, batch_size=5, progress=False)
    batch_sizes, failed_attempts, cache_releases = [], [], []

    def fail_above_two_prompts(tensor, hook):
        batch_sizes.append(tensor.shape[0])
        if tensor.shape[0] > 2:
            failed_attempts.append(weakref.ref(tensor))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def release_cache():  # what the CUDA caching allocator can release: only tensors nothing holds
        cache_releases.append((sys.exc_info()[0], [ref() is None for ref in failed_attempts]))

    monkeypatch.setattr(torch.cuda, "empty_cache", release_cache)
    with model.hooks([("hook_embed", fail_above_two_prompts)]):
        retried = capture(model, dataset, batch_size=5, progress=False)
    assert batch_sizes == [5, 2, 2, 1]  # 5 fails; then 2 + 2 + the last 1
    assert_same_result(expected, retried, atol=1e-7)
    assert retried.meta["oom_halvings"] == 1 and expected.meta["oom_halvings"] == 0
    # Released once, outside the handler, when the failed attempt's activations were already freed.
    assert cache_releases == [(None, [True])]

    def always_fail(tensor, hook):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with model.hooks([("hook_embed", always_fail)]), pytest.raises(InputError, match="out of memory with one prompt"):
        capture(model, dataset, batch_size=4, progress=False)


@torch.no_grad()
def test_plan_dataset_scores_one_dataset_at_another_datasets_positions():
    torch.manual_seed(0)
    model = HookedTransformer(TINY_CONFIGS["gpt2"]).eval()
    dataset = from_tensor(natural_like_tokens(n_prompts=3, seed=8))
    other = from_tensor(natural_like_tokens(n_prompts=3, seed=9))
    assert_same_result(capture(model, dataset, progress=False), capture(model, dataset, plan_dataset=dataset,
                                                                         progress=False))
    crossed = capture(model, other, ["induction"], plan_dataset=dataset, progress=False)
    assert torch.equal(crossed.counts["induction"], capture(model, dataset, ["induction"], progress=False).counts["induction"])
    with pytest.raises(InputError, match="plan_dataset shape"):
        capture(model, dataset, plan_dataset=from_tensor(natural_like_tokens(n_prompts=2)), progress=False)


@pytest.mark.parametrize("method", ["fused", "explicit"])
@torch.no_grad()
def test_a_learned_sink_is_not_attention_to_position_0(method):
    """A sink logit far above every score takes nearly all the mass: attention_sink (attention to the first
    position) falls to about zero instead of counting the sink, and rows of the pattern sum to 1 - sink."""
    torch.manual_seed(7)
    model = HookedTransformer(TINY_CONFIGS["sinks"]).eval()
    dataset = from_tensor(natural_like_tokens(n_prompts=2, n_pos=12))
    plain = capture(model, dataset, ["attention_sink", "entropy"], method=method, progress=False)
    for block in model.blocks:
        block.attn.sinks.fill_(30.0)
    sunk = capture(model, dataset, ["attention_sink", "entropy"], method=method, progress=False)
    assert plain.mean("attention_sink").min() > 0.05
    assert sunk.mean("attention_sink").max() < 1e-6
    assert sunk.mean("entropy").max() < 1e-6  # entropy over the real keys, whose mass is ~0
