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


def _dense(model, layer: int, head: int):
    """A head's d_model x d_model W_QK (its input norm folded in as matrices: diag(w), then the centring
    projection I - 11^T/D for LayerNorm; QK-norm weights as diag on d_head; GQA through its key/value head)
    and its W_OV as written (the norm after attention as diag(w) on the right)."""
    cfg, attn = model.cfg, model.blocks[layer].attn
    D, d, kv = cfg.d_model, cfg.d_head, head // attn.group_size
    W_Q, W_K, W_V, W_O = (attn.W_Q[head].double(), attn.W_K[kv].double(), attn.W_V[kv].double(),
                          attn.W_O[head].double())
    if cfg.qk_norm == "head":
        W_Q, W_K = W_Q @ torch.diag(attn.q_norm.w.double()), W_K @ torch.diag(attn.k_norm.w.double())
    elif cfg.qk_norm == "all":
        W_Q = W_Q @ torch.diag(attn.q_norm.w.double()[head * d:(head + 1) * d])
        W_K = W_K @ torch.diag(attn.k_norm.w.double()[kv * d:(kv + 1) * d])
    read = torch.eye(D, dtype=torch.float64)
    if cfg.norm != "none" and not cfg.post_norm and cfg.block_norms != "output":
        read = torch.diag(model.blocks[layer].ln1.w.double())
        if cfg.norm == "layernorm":
            read = (torch.eye(D, dtype=torch.float64) - 1.0 / D) @ read
    write = torch.eye(D, dtype=torch.float64)
    if cfg.block_norms != "pre":
        write = torch.diag(model.blocks[layer].ln1_post.w.double())
    # a row x of the stream is read as x @ read: LN(x) = x (I - J/D) diag(w) (+ a bias, which no product sees)
    qk = (read @ W_Q) @ (read @ W_K).T
    ov_read = (read @ W_V) @ W_O @ write
    ov_write = W_V @ W_O @ write
    return qk, ov_read, ov_write


@torch.no_grad()
@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa", "gemma", "olmo2", "bert", "neox"])
def test_every_architecture_folds_its_norms_as_the_dense_matrices_say(arch):
    """Q-, K- and V-composition as F(OV1 M) / (F(OV1) F(M)) of the d_model x d_model matrices built by hand."""
    cfg = TINY_CONFIGS[arch]
    model = perturbed(dataclasses.replace(cfg, n_layers=3, windows=cfg.windows and (4, None, None)), seed=3)
    with torch.no_grad():  # norm weights far from one, different per component, so a weight left out shows
        for name, param in model.named_parameters():
            if name.endswith((".w", "norm.w")):
                param.copy_(torch.rand_like(param) * 2 + 0.2)
    scores = composition_scores(model)
    for writer, reader in [((0, 1), (2, 3)), ((1, 2), (2, 0)), ((0, 3), (1, 1))]:
        ov1 = _dense(model, *writer)[2]
        qk2, ov2, _ = _dense(model, *reader)
        for k, right in enumerate([qk2, qk2.T, ov2]):
            expected = float((ov1 @ right).norm() / (ov1.norm() * right.norm()))
            assert float(scores[(k,) + writer + reader]) == pytest.approx(expected, rel=1e-9)
    assert scores[:, 1:, :, 1].abs().max() == 0 and scores[:, :, :, 0].abs().max() == 0  # only later readers


def test_composition_graph_nodes_edges_and_attributes():
    from headscope.analysis.role_table import HeadRoles, RoleTable

    model = perturbed(dataclasses.replace(TINY_CONFIGS["gpt2"], n_layers=3))
    scores = composition_scores(model)[0]  # Q-composition
    rows = tuple(HeadRoles(l, h, {}, {}, {}, ("induction", "sink") if (l, h) == (1, 2) else (), {})
                 for l in range(3) for h in range(4))
    roles = RoleTable("tiny", 3, 4, rows, {})
    edge = float(scores[0, 3, 2, 1])  # one score exactly at the threshold is kept
    graph = composition_graph(model, "q", threshold=edge, roles=roles)
    assert graph.graph["composition"] == "q" and graph.graph["node_value"] == "score"
    assert graph.graph["weight"] == "Q-composition score"
    assert graph.graph["node_value_label"] == "strongest Q-composition into the head"
    assert graph.nodes["L1H2"] == {"layer": 1, "head": 2, "roles": "induction;sink",
                                   "score": pytest.approx(float(scores[0, :, 1, 2].max()))}
    assert graph.nodes["L0H1"] == {"layer": 0, "head": 1, "roles": ""}  # layer 0 reads nothing earlier
    for l in (1, 2):
        for h in range(4):
            assert graph.nodes[f"L{l}H{h}"]["score"] == pytest.approx(float(scores[:l, :, l, h].max()))
    expected = {(f"L{a}H{b}", f"L{c}H{d}") for a in range(3) for b in range(4) for c in range(a + 1, 3)
                for d in range(4) if float(scores[a, b, c, d]) >= edge}
    assert set(graph.edges) == expected and ("L0H3", "L2H1") in expected
    assert graph.edges["L0H3", "L2H1"] == {"weight": edge, "composition": "q"}
    every = composition_graph(model, "v")  # neither threshold nor top_k: every earlier head into each reader
    assert every.number_of_edges() == 4 * 4 + 8 * 4 and every.graph["weights_sha256"] == model.weights_digest()
    assert all(roles == "" for _, roles in every.nodes(data="roles"))  # no role table: no roles
    default = composition_graph(model)  # K-composition unless told otherwise
    assert default.graph["composition"] == "k" and default.graph["weight"] == "K-composition score"
    assert composition_scores(model).shape == (3, 3, 4, 3, 4)  # q, k, v; writer layer, head; reader layer, head
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InputError, match="^threshold must be a finite number, got ") as refused:
            composition_graph(model, "k", threshold=bad)
        assert refused.value.parameter == "threshold"  # the command line names its own option for it
    with pytest.raises(InputError, match="unknown composition 'x': use q, k or v"):
        composition_graph(model, "x")
