"""Attribution patching: exact where the model is linear in the patch, close to exact patching on tiny steps."""


import pytest
import torch

from headscope.analysis.patching.attribution import attribution_sweep
from headscope.analysis.patching.exact import patch_sweep
from headscope.errors import InputError
from tests.analysis.patching.conftest import logit_diff, make_pairs, tiny




@pytest.mark.parametrize("arch", ["attn-only", "gpt2", "llama-gqa"])
def test_atp_of_the_last_layer_is_exact_for_a_direct_logit_metric(arch):
    # The logit difference is linear in the last layer's z when the final norm is linear (none), and nearly
    # so otherwise; for the attention-only model without norms AtP of layer-1 heads is exact.
    model, pairs = tiny(arch, seed=5), make_pairs(seed=5)
    exact = patch_sweep(model, pairs, "head", n_bootstrap=10)
    atp = attribution_sweep(model, pairs, "head", "atp", n_bootstrap=10)
    assert [e.heads for e in atp.effects] == [e.heads for e in exact.effects]
    assert atp.clean == pytest.approx(exact.clean) and atp.method == "atp"
    last = [(a.value, e.value) for a, e in zip(atp.effects, exact.effects) if a.heads[0][0] == 1]
    if arch == "attn-only":
        for a, e in last:
            assert a == pytest.approx(e, abs=1e-4)
    exact_deltas = torch.tensor([e.value - exact.base for e in exact.effects])
    atp_deltas = torch.tensor([a.value - atp.base for a in atp.effects])
    assert torch.corrcoef(torch.stack([exact_deltas, atp_deltas]))[0, 1] > 0.5


def test_atp_per_position_sums_to_the_head_estimate_and_inputs_add_up():
    model, pairs = tiny("gpt2", seed=6), make_pairs(seed=6)
    heads = attribution_sweep(model, pairs, "head", n_bootstrap=10)
    by_pos = attribution_sweep(model, pairs, "head-pos", n_bootstrap=10)
    per_head = torch.tensor([e.value - heads.base for e in heads.effects])
    summed = torch.tensor([e.value - heads.base for e in by_pos.effects]).reshape(8, 7).sum(1)
    assert torch.allclose(per_head, summed, atol=1e-4)
    # AtP* recomputes the softmax for q and k: on a tiny patch it agrees with AtP; v is the same in both.
    for which in ("q", "k", "v"):
        plain = attribution_sweep(model, pairs, which, "atp", n_bootstrap=10)
        star = attribution_sweep(model, pairs, which, "atp*", n_bootstrap=10)
        exact = patch_sweep(model, pairs, which, n_bootstrap=10)
        deltas = [torch.tensor([e.value - r.base for e in r.effects]) for r in (plain, star, exact)]
        if which == "v":
            assert torch.allclose(deltas[0], deltas[1], atol=1e-5)
        for estimate in deltas[:2]:
            assert torch.corrcoef(torch.stack([estimate, deltas[2]]))[0, 1] > 0.5, which


def test_atp_star_softmax_recompute_is_exact_for_a_last_layer_query_patch():
    # In the last layer of an attention-only model without norms, the logit difference is linear in the
    # pattern, so recomputing the softmax and linearising only the pattern change is exact.
    model, pairs = tiny("attn-only", seed=7), make_pairs(seed=7)
    star = attribution_sweep(model, pairs, "q", "atp*", n_bootstrap=10)
    exact = patch_sweep(model, pairs, "q", n_bootstrap=10)
    for s, e in zip(star.effects, exact.effects):
        if s.heads[0][0] == 1:
            assert s.value == pytest.approx(e.value, abs=1e-4)


def test_grad_drop_is_a_magnitude_with_the_sign_of_atp():
    model, pairs = tiny("gpt2", seed=8), make_pairs(n=1, seed=8)  # one pair: GradDrop's per-pair |.| is |mean|
    atp = attribution_sweep(model, pairs, "head", "atp", n_bootstrap=10)
    star = attribution_sweep(model, pairs, "head", "atp*", n_bootstrap=10)
    for a, s in zip(atp.effects, star.effects):
        assert (a.value - atp.base) * (s.value - star.base) >= -1e-9
    # Layer-1 heads feed nothing but the logits: dropping layer 0 leaves them whole, dropping layer 1 zeroes
    # them, so GradDrop equals |AtP| / (L - 1) = |AtP| for them.
    for a, s in zip(atp.effects, star.effects):
        if a.heads[0][0] == 1:
            assert abs(s.value - star.base) == pytest.approx(abs(a.value - atp.base), abs=1e-5)
    with pytest.raises(InputError, match="unknown attribution method"):
        attribution_sweep(model, pairs, "head", "ig")


@pytest.mark.parametrize("arch", ["llama-gqa", "gemma", "sinks", "olmo2"])
def test_atp_query_and_key_estimates_equal_a_full_backward(arch):
    """AtP of a head's q (k) is (q_source - q_base) . dM/dq; q and k reach the output only through the head's
    pattern, so a plain backward through the whole model, hooked at the q and k attention reads, is an
    independent statement of it (soft-capping, windows and sinks included). A key is shared by its group:
    the group's estimates add up to the shared key's."""
    model, pairs = tiny(arch, seed=9), make_pairs(seed=9)
    mask, real = pairs.clean.attention_mask, pairs.clean.attention_mask.bool()
    L, H, group = model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_heads // model.cfg.kv_heads
    names = [f"blocks.{l}.attn.hook_rot_{n}" for l in range(L) for n in "qk"]
    with torch.no_grad():
        _, source = model.run_with_cache(pairs.corrupted.tokens, names_filter=names, attention_mask=mask)
    kept = {}

    def keep(x, hook):
        kept[hook.name] = x
        return x

    leaf = ("blocks.0.hook_resid_pre", lambda x, hook: x.detach().requires_grad_())
    with torch.enable_grad(), model.hooks([leaf] + [(n, keep) for n in names]):
        logits = model(pairs.clean.tokens, attention_mask=mask)
        total = logit_diff(logits, pairs).sum()
    grads = dict(zip(names, torch.autograd.grad(total, [kept[n] for n in names])))
    for which in "qk":
        atp = attribution_sweep(model, pairs, which, "atp", n_bootstrap=10)
        estimates = torch.tensor([e.value - atp.base for e in atp.effects]).reshape(L, H)
        for layer in range(L):
            name = f"blocks.{layer}.attn.hook_rot_{which}"
            per_head = ((source[name] - kept[name].detach()) * grads[name])[real].sum(0).sum(-1) / len(pairs)
            if which == "k":
                estimates_layer = estimates[layer].reshape(-1, group).sum(1)
            else:
                estimates_layer = estimates[layer]
            assert torch.allclose(estimates_layer, per_head, atol=1e-4, rtol=1e-4), (which, layer)
            assert per_head.abs().max() > 1e-4  # the patches matter
