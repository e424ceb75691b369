"""Composition scores equal the direct computation, ignore head order, and treat GQA as repeated K/V."""

import dataclasses

import pytest
import torch

from headscope.analysis.composition import composition_graph, composition_scores
from headscope.errors import InputError
from headscope.loading import LoadedModel
from headscope.model.transformer import HookedTransformer
from tests.conftest import TINY_CONFIGS


def perturbed(cfg, seed=0) -> HookedTransformer:
    torch.manual_seed(seed)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


@torch.no_grad()
def direct(model, kind, writer, reader):
    """The d_model x d_model matrices themselves, ln1 of the reader folded in (scale, then centring)."""
    (l1, h1), (l2, h2) = writer, reader
    a1, a2 = model.blocks[l1].attn, model.blocks[l2].attn
    w = model.blocks[l2].ln1.w.detach().double()
    fold = lambda W: (W.double() * w[:, None]) - (W.double() * w[:, None]).mean(0, keepdim=True)  # noqa: E731
    ov1 = a1.W_V[h1].double() @ a1.W_O[h1].double()
    qk2 = fold(a2.W_Q[h2]) @ fold(a2.W_K[h2]).T
    right = {"q": qk2, "k": qk2.T, "v": fold(a2.W_V[h2]) @ a2.W_O[h2].double()}[kind]
    return float((ov1 @ right).norm() / (ov1.norm() * right.norm()))


def test_scores_equal_the_direct_computation():
    model = perturbed(dataclasses.replace(TINY_CONFIGS["gpt2"], n_layers=3))
    scores = composition_scores(model)
    for k, kind in enumerate("qkv"):
        for writer, reader in [((0, 1), (2, 3)), ((1, 0), (2, 2)), ((0, 3), (1, 0))]:
            assert float(scores[k][writer + reader]) == pytest.approx(direct(model, kind, writer, reader), rel=1e-9)
    assert scores[:, 2, :, 0].abs().max() == 0  # a later layer never writes into an earlier one


@torch.no_grad()
def test_scores_follow_the_heads_when_their_order_changes():
    model = perturbed(TINY_CONFIGS["gpt2"])
    order = torch.tensor([2, 0, 3, 1])
    state = dict(model.state_dict())
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
        state[f"blocks.1.attn.{name}"] = state[f"blocks.1.attn.{name}"][order]
    shuffled = HookedTransformer.from_loaded(LoadedModel(model.cfg, state))
    torch.testing.assert_close(composition_scores(shuffled)[:, 0, :, 1, :],
                               composition_scores(model)[:, 0, :, 1, order])


@torch.no_grad()
def test_grouped_query_attention_reads_through_its_key_value_head():
    gqa = perturbed(TINY_CONFIGS["llama-gqa"])
    state = dict(gqa.state_dict())
    for name in list(state):
        if name.endswith(("attn.W_K", "attn.W_V")):
            state[name] = state[name].repeat_interleave(2, dim=0)
    mha = HookedTransformer.from_loaded(LoadedModel(dataclasses.replace(gqa.cfg, n_kv_heads=None), state))
    torch.testing.assert_close(composition_scores(gqa), composition_scores(mha))


def test_composition_graph_keeps_the_strongest_edges():
    model = perturbed(dataclasses.replace(TINY_CONFIGS["gpt2"], n_layers=3))
    graph = composition_graph(model, "k", top_k=2)
    assert graph.number_of_nodes() == 12 and all(graph.in_degree(f"L{l}H{h}") == 2 for l in (1, 2) for h in range(4))
    scores = composition_scores(model)[1]
    strongest = scores[:2, :, 2, 1].flatten().topk(2).values.tolist()
    assert sorted(w for _, _, w in graph.in_edges("L2H1", data="weight")) == pytest.approx(sorted(strongest))
    assert composition_graph(model, "v", threshold=2.0).number_of_edges() == 0
    with pytest.raises(InputError, match="unknown composition 'x'"):
        composition_graph(model, "x")
