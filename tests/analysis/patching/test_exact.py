"""Exact patching: the fast sweeps equal one `run_with_hooks` pass per patch, written without the fast path."""

import pytest
import torch

from headscope.analysis.patching.exact import patch, patch_sweep
from headscope.errors import InputError
from tests.analysis.patching.conftest import logit_diff, make_pairs, tiny


@torch.no_grad()
def slow(model, pairs, name, edit, denoise=False):
    """One full hooked pass of the base run whose activation `name` is changed by `edit(act, source_act)`."""
    base, source = (pairs.corrupted, pairs.clean) if denoise else (pairs.clean, pairs.corrupted)
    mask = pairs.clean.attention_mask
    _, cache = model.run_with_cache(source.tokens, names_filter=[name], attention_mask=mask)

    def hook(act, hook):
        act = act.clone()
        edit(act, cache[name])
        return act

    logits = model.run_with_hooks(base.tokens, fwd_hooks=[(name, hook)], attention_mask=mask)
    return float(logit_diff(logits, pairs).mean())


def put(index):
    def edit(act, source):
        act[index] = source[index]
    return edit


@pytest.mark.parametrize("arch, denoise", [("gpt2", False), ("llama-gqa", True), ("neox", False), ("attn-only", True),
                                           ("gemma", False), ("sinks", True), ("olmo2", False)])
def test_head_sweeps_equal_one_hooked_pass_per_head(arch, denoise):
    model, pairs = tiny(arch), make_pairs()
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = patch_sweep(model, pairs, "head", denoise=denoise, n_bootstrap=10, max_memory=1)
    stacked = patch_sweep(model, pairs, "head", denoise=denoise, n_bootstrap=10)
    for e, s in zip(heads.effects, stacked.effects):
        (l, h), = e.heads
        expected = slow(model, pairs, f"blocks.{l}.attn.hook_z", put((slice(None), slice(None), h)), denoise)
        assert e.value == pytest.approx(expected, abs=1e-4) and s.value == pytest.approx(expected, abs=1e-4)
    assert max(abs(e.value - heads.base) for e in heads.effects) > 1e-3  # the patches do something
    by_pos = patch_sweep(model, pairs, "head-pos", denoise=denoise, n_bootstrap=10)
    assert len(by_pos.effects) == L * H * 7
    for e in by_pos.effects[:: 9]:
        ((l, h),), (p,) = e.heads, e.positions
        expected = slow(model, pairs, f"blocks.{l}.attn.hook_z", put((slice(None), p, h)), denoise)
        assert e.value == pytest.approx(expected, abs=1e-4)
    resid = patch_sweep(model, pairs, "resid", denoise=denoise, n_bootstrap=10)
    for e in resid.effects:
        expected = slow(model, pairs, f"blocks.{e.layer}.hook_resid_pre", put((slice(None), e.positions[0])), denoise)
        assert e.value == pytest.approx(expected, abs=1e-4)
    assert resid.position_grid(L, 7).shape == (L, 7)


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama-gqa", "gemma", "sinks", "olmo2"])
def test_input_and_pattern_sweeps_equal_patching_that_input_alone(arch):
    model, pairs = tiny(arch, seed=1), make_pairs(seed=1)
    group = model.cfg.n_heads // model.cfg.kv_heads
    for site in ("q", "k", "v", "pattern"):
        result = patch_sweep(model, pairs, site, n_bootstrap=10)
        assert result.kind == site
        for e in result.effects:
            (l, h), = e.heads
            if site in ("k", "v") and group > 1:
                continue  # a query head shares its key/value head: hooking hook_k would patch the whole group
            # q and k as attention reads them: after QK-norm (OLMo 2 normalises all heads together, so a
            # head's query before the norm is not its own) and RoPE
            rot = "rot_" if model.cfg.positional == "rotary" else ""
            name = {"pattern": f"blocks.{l}.attn.hook_pattern", "v": f"blocks.{l}.attn.hook_v"}.get(
                site, f"blocks.{l}.attn.hook_{rot}{site}")
            index = (slice(None), h) if site == "pattern" else (slice(None), slice(None), h)
            assert e.value == pytest.approx(slow(model, pairs, name, put(index)), abs=1e-4), (site, l, h)


def test_gqa_key_patch_of_a_whole_group_equals_hooking_the_shared_key():
    model, pairs = tiny("llama-gqa", seed=2), make_pairs(seed=2)
    both = patch(model, pairs, [(1, 0), (1, 1)], site="k", n_bootstrap=10).effects[0]
    expected = slow(model, pairs, "blocks.1.attn.hook_k", put((slice(None), slice(None), 0)))
    assert both.value == pytest.approx(expected, abs=1e-4)


def test_patching_every_head_of_every_layer_moves_the_clean_run_to_the_corrupted_run():
    model, pairs = tiny("attn-only", seed=3), make_pairs(seed=3)
    every = [(l, h) for l in range(2) for h in range(4)]
    result = patch(model, pairs, every, n_bootstrap=10)
    # attention-only: the residual stream is embeddings + heads, and the embeddings differ at 1, 2, 4, so not 0;
    # patching the residual stream into layer 0 everywhere is the corrupted run exactly.
    assert result.effects[0].normalized != pytest.approx(1.0)
    resid = patch_sweep(model, pairs, "resid", n_bootstrap=10)
    assert result.clean != pytest.approx(result.corrupted)
    denoised = patch(model, pairs, every, denoise=True, n_bootstrap=10).effects[0]
    noised_z = [patch(model, pairs, [(l, h)], positions=[6], n_bootstrap=10).effects[0] for l, h in every[:2]]
    assert all(e.positions == (6,) for e in noised_z)
    assert denoised.value != pytest.approx(result.corrupted)
    assert len(resid.effects) == 2 * 7


@torch.no_grad()
def test_an_encoder_is_patched_and_ablated_by_the_cosine_of_its_pooled_embedding():
    from headscope.analysis.ablation import ablate, sweep
    from headscope.capture.datasets import from_tensor

    model, pairs = tiny("bert", seed=12), make_pairs(seed=12)
    result = patch_sweep(model, pairs, "head", metric="cosine", n_bootstrap=10)
    assert result.clean == pytest.approx(1.0) and result.corrupted < 1.0
    mask = pairs.clean.attention_mask
    real = mask.bool()[..., None]

    def pooled(hidden):
        return (hidden * real).sum(1) / real.sum(1)

    clean = pooled(model(pairs.clean.tokens, attention_mask=mask))
    _, cache = model.run_with_cache(pairs.corrupted.tokens, names_filter=["blocks.1.attn.hook_z"], attention_mask=mask)

    def swap(z, hook):
        z = z.clone()
        z[:, :, 2] = cache["blocks.1.attn.hook_z"][:, :, 2]
        return z

    hidden = model.run_with_hooks(pairs.clean.tokens, fwd_hooks=[("blocks.1.attn.hook_z", swap)], attention_mask=mask)
    expected = torch.nn.functional.cosine_similarity(pooled(hidden), clean, dim=-1).mean()
    assert result.effects[6].value == pytest.approx(float(expected), abs=1e-5)
    data = from_tensor(pairs.clean.tokens)
    swept = sweep(model, data, "zero", "cosine", n_bootstrap=10)
    alone = ablate(model, data, [(1, 2)], "zero", "cosine", n_bootstrap=10).effects[0]
    assert swept.baseline == pytest.approx(1.0) and swept.effects[6].value == pytest.approx(alone.value, abs=1e-5)


def test_an_encoder_refuses_a_logit_metric_in_one_line_whatever_form_it_takes():
    """A metric reading next-token logits (by name, as the built-in Metric object, as a callable) is refused on
    an encoder in one line naming the metric; the cosine metric is what an encoder gives."""
    from headscope.analysis.metrics import METRICS, pair_metric

    model, pairs = tiny("bert", seed=12), make_pairs(seed=12)
    loss = pair_metric("loss", pairs.answers, pairs.wrongs)
    for metric, words in (("loss", "has no logits for 'loss'"), (loss, "metric 'loss' reads next-token logits"),
                          (METRICS["kl"], "metric 'kl' reads next-token logits"),
                          (lambda *args: loss(*args), "metric '<lambda>' reads next-token logits")):
        with pytest.raises(InputError, match=f"^this model \\(an encoder\\) {words}|^{words}"):
            patch_sweep(model, pairs, "head", metric=metric, n_bootstrap=10)
