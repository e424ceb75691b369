"""Path patching equals a slow construction written with full hooked passes, independent of the fast path."""

import pytest
import torch

from headscope.analysis.patching.path import path_patch, path_patch_sweep
from headscope.errors import InputError
from tests.analysis.patching.conftest import logit_diff, make_pairs, tiny


@torch.no_grad()
def slow_path(model, pairs, senders, receivers, via, denoise=False):
    """Wang et al.'s recipe with three full passes and hooks: cache both runs' z; a hybrid pass with every
    head frozen at the base z except the senders (source z), keeping the receiver layer's `via` projection;
    a last pass of the base run with only the receiver's `via` projection replaced by the hybrid's."""
    base, source = (pairs.corrupted, pairs.clean) if denoise else (pairs.clean, pairs.corrupted)
    mask = pairs.clean.attention_mask
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    _, base_cache = model.run_with_cache(base.tokens, names_filter=z_names, attention_mask=mask)
    _, source_cache = model.run_with_cache(source.tokens, names_filter=z_names, attention_mask=mask)

    def freeze(z, hook):
        z = base_cache[hook.name].clone()
        layer = int(hook.name.split(".")[1])
        for l, h in senders:
            if l == layer:
                z[:, :, h] = source_cache[hook.name][:, :, h]
        return z

    receivers = [receivers] if isinstance(receivers, tuple) else receivers
    rot = "rot_" if via in "qk" and model.cfg.positional == "rotary" else ""  # as attention reads q and k
    names = {f"blocks.{layer}.attn.hook_{rot}{via}" for layer, _ in receivers}
    last = max(layer for layer, _ in receivers)
    kept = {}
    model.run_with_hooks(base.tokens, fwd_hooks=[(z_name, freeze) for z_name in z_names[:last]]
                         + [(name, lambda act, hook: kept.__setitem__(hook.name, act)) for name in names],
                         attention_mask=mask)

    def replace(act, hook):
        act = act.clone()
        layer = int(hook.name.split(".")[1])
        for l, h in receivers:
            if l == layer:
                act[:, :, h] = kept[hook.name][:, :, h]
        return act

    logits = model.run_with_hooks(base.tokens, fwd_hooks=[(name, replace) for name in names], attention_mask=mask)
    return float(logit_diff(logits, pairs).mean())


@torch.no_grad()
def slow_direct(model, pairs, senders):
    """The direct path by hand: the change in each sender layer's attention output (read at hook_attn_out,
    after any norm on it) when the senders' z come from the corrupted run, added to the clean final residual
    stream, then the final norm and the unembedding."""
    mask = pairs.clean.attention_mask
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    layers = sorted({l for l, _ in senders})
    outs = [f"blocks.{l}.hook_attn_out" for l in layers]
    _, clean = model.run_with_cache(pairs.clean.tokens, names_filter=[last] + outs, attention_mask=mask)
    _, corrupted = model.run_with_cache(pairs.corrupted.tokens, names_filter=[f"blocks.{l}.attn.hook_z" for l in layers],
                                        attention_mask=mask)
    resid = clean[last].clone()
    for layer, out in zip(layers, outs):
        def put(z, hook, layer=layer):
            z = z.clone()
            for h in [h for l, h in senders if l == layer]:
                z[:, :, h] = corrupted[hook.name][:, :, h]
            return z

        with model.hooks([(f"blocks.{layer}.attn.hook_z", put)]):
            _, patched = model.run_with_cache(pairs.clean.tokens, names_filter=out, attention_mask=mask)
        resid += patched[out] - clean[out]
    hidden = model.ln_final(resid) if model.cfg.final_norm else resid
    return float(logit_diff(model.unembed_hidden(hidden), pairs).mean())


@pytest.mark.parametrize("arch", ["gpt2", "neox", "attn-only", "llama-gqa", "gemma", "sinks", "olmo2"])
def test_path_patching_equals_the_slow_construction(arch):
    model, pairs = tiny(arch, seed=4), make_pairs(seed=4)
    for via in ("q", "k", "v"):
        if via != "q" and model.cfg.kv_heads < model.cfg.n_heads:
            continue  # the slow construction hooks the shared key/value head; the fast one patches one query head
        receiver = (1, 2)
        sweep = path_patch_sweep(model, pairs, [receiver], via, n_bootstrap=10, max_memory=1)
        stacked = path_patch_sweep(model, pairs, [receiver], via, n_bootstrap=10)
        for one, many in zip(sweep.effects, stacked.effects):
            expected = slow_path(model, pairs, list(one.heads), receiver, via)
            assert one.value == pytest.approx(expected, abs=1e-4) and many.value == pytest.approx(expected, abs=1e-4)
        both = path_patch(model, pairs, [(0, 0), (0, 3)], [receiver], via, denoise=True, n_bootstrap=10)
        expected = slow_path(model, pairs, [(0, 0), (0, 3)], receiver, via, denoise=True)
        assert both.effects[0].value == pytest.approx(expected, abs=1e-4)
        assert both.meta["via"] == via and both.meta["receivers"] == ["L1H2"]
    direct = path_patch_sweep(model, pairs, None, "logits", n_bootstrap=10)
    assert len(direct.effects) == 8
    for e in direct.effects:
        assert e.value == pytest.approx(slow_direct(model, pairs, list(e.heads)), abs=1e-4)


def test_a_receiver_before_its_sender_is_refused():
    model, pairs = tiny("gpt2"), make_pairs()
    with pytest.raises(InputError, match=r"path L1H0 -> L0H2: the receiver \(layer 0\) must come after the sender"):
        path_patch(model, pairs, [(1, 0)], [(0, 2)], "k")
    with pytest.raises(InputError, match="must come after"):
        path_patch(model, pairs, [(1, 0)], [(1, 2)], "q")
    with pytest.raises(InputError, match="unknown path input 'o'"):
        path_patch(model, pairs, [(0, 0)], [(1, 2)], "o")
    with pytest.raises(InputError, match="head L5H0 does not exist"):
        path_patch(model, pairs, [(5, 0)], [(1, 2)], "q")


def test_receivers_in_two_layers_see_the_senders_only_through_the_path():
    import dataclasses

    from headscope.model.transformer import HookedTransformer
    from tests.conftest import TINY_CONFIGS

    torch.manual_seed(13)
    model = HookedTransformer(dataclasses.replace(TINY_CONFIGS["gpt2"], n_layers=3)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("W_"):
                param.mul_(5)
    pairs = make_pairs(seed=13)
    receivers = [(1, 2), (2, 1)]
    for via in ("q", "v"):
        fast = path_patch(model, pairs, [(0, 3)], receivers, via, n_bootstrap=10).effects[0].value
        assert fast == pytest.approx(slow_path(model, pairs, [(0, 3)], receivers, via), abs=1e-4)
