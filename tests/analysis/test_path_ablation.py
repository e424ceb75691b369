"""Measured composition: removing one head's output from another's input only equals an independent construction."""

import dataclasses

import pytest
import torch

from headscope.analysis.path_ablation import measured_composition_graph, path_ablation_effects
from headscope.capture.datasets import repeated_random_tokens
from headscope.errors import InputError
from tests.analysis.test_composition import perturbed
from tests.conftest import TINY_CONFIGS


@torch.no_grad()
def write_of(model, tokens, layer: int, head: int) -> torch.Tensor:
    """What a head adds to the residual stream, by hooked passes: the layer's attention output minus the one
    it makes with the head's result zeroed (its bias belongs to no head; a norm on the output mixes heads)."""
    kept = {}

    def keep(act, hook):
        kept[hook.name] = act

    def zero(result, hook):
        result = result.clone()
        result[:, :, head] = 0
        return result

    name = f"blocks.{layer}.hook_attn_out"
    model.run_with_hooks(tokens, fwd_hooks=[(name, keep)])
    with_head = kept[name]
    model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_result", zero), (name, keep)])
    return with_head - kept[name]


@torch.no_grad()
@pytest.mark.parametrize("arch", ["gpt2", "gemma", "olmo2"])
def test_path_ablation_equals_an_independent_construction_when_the_reader_is_alone_in_its_layer(arch):
    windows = {"windows": (4, None, 4)} if any(TINY_CONFIGS[arch].windows) else {}  # one entry a layer
    cfg = dataclasses.replace(TINY_CONFIGS[arch], n_heads=1, n_kv_heads=1, d_head=32, n_layers=3, **windows)
    model = perturbed(cfg, seed=4)
    data = repeated_random_tokens(4, 6, vocab_size=99, seed=0)
    effect = path_ablation_effects(model, data, [((0, 0), (2, 0))], "loss")[((0, 0), (2, 0))]
    # Independently: with one head in layer 2, removing L0H0 from its input is subtracting L0H0's write from
    # the stream entering layer 2 and adding it back after layer 2's attention.
    removed = write_of(model, data.tokens, 0, 0)
    clean = model(data.tokens)
    hooks = [("blocks.2.hook_resid_pre", lambda x, hook: x - removed),
             ("blocks.2.hook_attn_out", lambda y, hook: y + removed)]
    logits = model.run_with_hooks(data.tokens, fwd_hooks=hooks)
    expected = float(model.next_token_loss(logits, data.tokens) - model.next_token_loss(clean, data.tokens))
    assert effect == pytest.approx(expected, abs=1e-5) and abs(effect) > 1e-4


@torch.no_grad()
def test_path_ablation_of_a_silent_writer_changes_nothing_and_graphs_carry_both_weights():
    model = perturbed(dataclasses.replace(TINY_CONFIGS["gpt2"], n_layers=3), seed=6)
    model.blocks[0].attn.W_O[1] = 0  # L0H1 writes nothing
    data = repeated_random_tokens(4, 6, vocab_size=99, seed=0)
    effects = path_ablation_effects(model, data, [((0, 1), (2, 3)), ((0, 2), (1, 0))], "kl")
    assert effects[((0, 1), (2, 3))] == pytest.approx(0.0, abs=1e-7) and effects[((0, 2), (1, 0))] > 0
    graph = measured_composition_graph(model, data, "k", top_k=1, metric="kl")
    for _, _, attrs in graph.edges(data=True):
        assert attrs["weight"] == attrs["effect"] and "composition_score" in attrs
    with pytest.raises(InputError, match="only feed heads of later layers"):
        path_ablation_effects(model, data, [((1, 0), (1, 2))])


def test_a_heads_write_through_the_norm_on_attention_output_is_what_the_layer_loses_without_it():
    """Gemma's sandwich norm mixes a layer's heads: a head's write is the layer's output minus the output the
    layer makes with the head's result zeroed (a hooked pass), not the head's result itself."""
    model = perturbed(TINY_CONFIGS["gemma"], seed=1)
    data = repeated_random_tokens(2, 6, vocab_size=99, seed=0)
    effect = path_ablation_effects(model, data, [((0, 1), (1, 0))], "loss")[((0, 1), (1, 0))]
    kept = {}

    def keep(act, hook):
        kept[hook.name] = act
        return act

    with torch.no_grad():
        clean = model(data.tokens)
        write = write_of(model, data.tokens, 0, 1)
        model.run_with_hooks(data.tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x - write),
                                                     ("blocks.1.attn.hook_z", keep)])
        z_without = kept["blocks.1.attn.hook_z"][:, :, 0]

        def splice(z, hook):
            z = z.clone()
            z[:, :, 0] = z_without
            return z

        logits = model.run_with_hooks(data.tokens, fwd_hooks=[("blocks.1.attn.hook_z", splice)])
    expected = float(model.next_token_loss(logits, data.tokens) - model.next_token_loss(clean, data.tokens))
    assert effect == pytest.approx(expected, abs=1e-5) and abs(effect) > 1e-5
