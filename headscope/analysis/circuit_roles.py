"""Head roles read from the OV circuit and from IOI prompts: copying, negative copying, successor, name mover.

Each is a score role of the registry (`role_registry.Role` with a `score` function); they read the
unembedding, so they apply to decoders only (`encoder=False`). A role whose inputs a model cannot give
(an unembedding, a tokenizer, single-token ordinal items or IOI names) does not apply to it: its `requires`
check fails and classify leaves the role out.

- **copying**: the OV copying score (Elhage et al. 2021; `ov_scores.ov_copying_scores`, in [-1, 1]) at
  least `COPYING_THRESHOLD` = 0.9: nine tenths of the eigenvalue mass of the full OV circuit on the
  frequent tokens is positive. Elhage et al. give no cut-off; 0.9 keeps the near-pure copiers (their
  figure of a 2-layer model's heads bunches them just below +1).
- **negative_copying**: minus that score at least 0.9. It is only the weight half of McDougall et al.'s
  (2023) copy suppression; `copy_suppression` (`copy_suppression.py`, an optional role) adds the other
  half, attention to earlier copies of the token being predicted.
- **successor**: Gould et al.'s (2024) succession score (`ov_scores.successor_scores`) at least
  `SUCCESSOR_THRESHOLD` = 0.5: the successor is the top-1 logit for most items, against a chance of 1 /
  len(sequence) (0.072 pooled over the default sequences on SmolLM2), seven times chance. Gould et al. report
  successor heads with succession scores close to 1 and give no cut-off.
- **name_mover**: Wang et al.'s (2022) name movers, on `N_IOI_PROMPTS` generated IOI prompts
  (`patching.generate.ioi_records`): per prompt, the head's attention from the final position to the
  indirect object (IO) name times its copy score (1 when the IO token is among the `TOP_K` = 5 largest
  logits of the whole vocabulary after its effective embedding, W_E + MLP0(W_E) as Wang et al. take the
  first MLP's output, goes through the head's OV circuit and the folded unembedding, else 0); the mean over
  prompts, in [0, 1]. Threshold `NAME_MOVER_THRESHOLD` = 0.3: Wang et al.'s name movers put most of the
  final position's attention on the IO and copy it in 80-100% of prompts; a head scoring 0.3 does so on
  average for a third of the attention.

None of the four has a null, and the threshold alone decides: copying, negative_copying and successor
are read from the weights (no prompt, so no prompt control), and name_mover scores its own generated IOI
prompts, which a shuffled probe leaves as they are (the probe is not used). The attention half of copy
suppression, which is scored on the probe, is `copy_suppression.py`, with the shuffled control as its null.

References
----------
Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits", Transformer Circuits Thread.
McDougall, Conmy, Rushing, McGrath and Nanda (2023), "Copy Suppression: Comprehensively Understanding an
Attention Head", arXiv:2310.04625.
Gould, Ong, Ogden and Conmy (2024), "Successor Heads: Recurring, Interpretable Attention Heads In The
Wild", ICLR 2024.
Wang, Variengien, Conmy, Shlegeris and Steinhardt (2022), "Interpretability in the Wild: a Circuit for
Indirect Object Identification in GPT-2 small", arXiv:2211.00593 (name mover heads, the copy score).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from headscope.analysis.composition import reading_weights, writing_weights
from headscope.analysis.ov_scores import effective_embeddings, folded_unembedding, ordinal_sequences, ov_copying_scores
from headscope.analysis.ov_scores import successor_scores
from headscope.analysis.patching.generate import ioi_records, single_token_names
from headscope.analysis.role_registry import Role
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer

COPYING_THRESHOLD = 0.9
SUCCESSOR_THRESHOLD = 0.5
NAME_MOVER_THRESHOLD = 0.3
TOP_K = 5  # Wang et al.'s copy score: the name among the head's top-5 logits
N_IOI_PROMPTS = 16
WEIGHTS_ONLY = "weights only: no prompt to control"


def has_unembedding(model: HookedTransformer) -> bool:
    """Whether the model has an unembedding, which every role here reads."""
    return bool(model.cfg.has_unembed)


def copying_role_scores(model: HookedTransformer, dataset=None) -> torch.Tensor:
    """(n_layers, n_heads): the OV copying score on the default frequent tokens (the probe prompts unused)."""
    return ov_copying_scores(model)


def negative_copying_role_scores(model: HookedTransformer, dataset=None) -> torch.Tensor:
    """(n_layers, n_heads): minus the OV copying score (the probe prompts unused)."""
    return -ov_copying_scores(model)


def has_ordinal_items(model: HookedTransformer) -> bool:
    """Whether the model has an unembedding, a tokenizer and, in some default ordinal sequence, two
    neighbouring items that are single tokens (what the succession score needs)."""
    if not has_unembedding(model) or model.tokenizer is None:
        return False
    try:
        ordinal_sequences(model)
    except InputError:  # no scorable pair in this vocabulary
        return False
    return True


def successor_role_scores(model: HookedTransformer, dataset=None) -> torch.Tensor:
    """(n_layers, n_heads): the pooled succession score on the default ordinal sequences."""
    return successor_scores(model).scores


# ----- name movers ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt as tokens: `tokens` (with BOS when the model has one), the position of the indirect
    object name, and its token id; the final position is the last token."""

    tokens: tuple[int, ...]
    io_position: int
    io_id: int


def ioi_prompts(model: HookedTransformer, n: int = N_IOI_PROMPTS, seed: int = 0) -> list[IOIPrompt]:
    """`n` clean IOI prompts of `ioi_records` as tokens, each with its IO name's position and id."""
    prompts = []
    for record in ioi_records(model.tokenizer, n, seed):
        tokens = model.tokenizer.encode(record["clean"])
        io_id = model.tokenizer.encode(record["answer"], prepend_bos=False)[0]
        if tokens.count(io_id) != 1:
            raise InputError(f"the IOI prompt {record['clean']!r} holds the indirect object {tokens.count(io_id)} "
                             "times, not once")
        prompts.append(IOIPrompt(tuple(tokens), tokens.index(io_id), io_id))
    return prompts


@torch.no_grad()
def io_attention(model: HookedTransformer, prompts: Sequence[IOIPrompt]) -> torch.Tensor:
    """(n_prompts, n_layers, n_heads): each head's attention from the final position to the IO name, one
    forward pass per prompt (the prompts differ in length); hooks the caller attached stay active."""
    rows = []
    for prompt in prompts:
        tokens = torch.tensor([prompt.tokens], device=model.device)
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
        rows.append(torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1, prompt.io_position]
                                 for layer in range(model.cfg.n_layers)]).double().cpu())
    return torch.stack(rows)


@torch.no_grad()
def io_copy_hits(model: HookedTransformer, io_ids: Sequence[int], k: int = TOP_K) -> torch.Tensor:
    """(n_prompts, n_layers, n_heads) bool: Wang et al.'s copy test, whether each IO token is among the `k`
    largest logits of the whole vocabulary through each head's OV circuit from its effective embedding."""
    names = sorted(set(io_ids))
    source = effective_embeddings(model, names)  # (names, d_model)
    # the whole-vocabulary unembedding folded once (not per layer); float32 suffices to rank logits
    W_U = folded_unembedding(model, range(model.cfg.d_vocab)).float()
    wanted = torch.tensor([names.index(t) for t in io_ids])
    layers = []
    for layer in range(model.cfg.n_layers):
        W_V, W_O = reading_weights(model, layer)[2], writing_weights(model, layer)[1]
        top = (((source @ W_V) @ W_O).float() @ W_U).topk(k, dim=-1).indices.cpu()  # (heads, names, k)
        hit = (top == torch.tensor(names)[None, :, None]).any(-1)  # (heads, names)
        layers.append(hit[:, wanted].T)  # (prompts, heads)
    return torch.stack(layers, 1)


def name_mover_scores(model: HookedTransformer, prompts: Sequence[IOIPrompt]) -> torch.Tensor:
    """(n_layers, n_heads) in [0, 1]: the mean over `prompts` of each head's attention from the final position
    to the IO name times its copy score (1 when the IO token is in the head's OV top-5 logits, else 0)."""
    if not prompts:
        raise InputError("name mover scores need at least one IOI prompt")
    if not model.cfg.has_unembed:
        raise InputError("name mover scores read the unembedding; this model (an encoder) has none")
    hits = io_copy_hits(model, [p.io_id for p in prompts])
    return (io_attention(model, prompts) * hits.double()).mean(0)


def has_ioi_names(model: HookedTransformer) -> bool:
    """Whether the model has an unembedding and a tokenizer with three IOI names that are single tokens."""
    return has_unembedding(model) and model.tokenizer is not None and len(single_token_names(model.tokenizer)) >= 3


def name_mover_role_scores(model: HookedTransformer, dataset=None) -> torch.Tensor:
    """(n_layers, n_heads): `name_mover_scores` on `N_IOI_PROMPTS` generated IOI prompts (probe prompts unused)."""
    return name_mover_scores(model, ioi_prompts(model))


CIRCUIT_ROLES = (
    Role("copying", score=copying_role_scores, threshold=COPYING_THRESHOLD, encoder=False, requires=has_unembedding,
         evidence="OV copying score sum(lambda) / sum(abs(lambda)) of W_E W_OV W_U on 1000 frequent tokens; 0.9: "
                  "nearly all eigenvalue mass positive", citation="Elhage et al. (2021)", requirement="an unembedding",
         null_reason=WEIGHTS_ONLY),
    Role("negative_copying", score=negative_copying_role_scores, threshold=COPYING_THRESHOLD, encoder=False,
         requires=has_unembedding, requirement="an unembedding", null_reason=WEIGHTS_ONLY,
         evidence="minus the OV copying score; the weight half of copy suppression (copy_suppression adds the "
                  "attention half)", citation="McDougall et al. (2023)"),
    Role("successor", score=successor_role_scores, threshold=SUCCESSOR_THRESHOLD, encoder=False,
         requires=has_ordinal_items, requirement="an unembedding and a tokenizer with two neighbouring ordinal items "
                                               "(numbers, letters, days, months) that are single tokens",
         null_reason=WEIGHTS_ONLY,
         evidence="succession score: share of ordinal items whose top-1 OV logit is the successor; 0.5 is about "
                  "7x chance", citation="Gould et al. (2024)"),
    Role("name_mover", score=name_mover_role_scores, threshold=NAME_MOVER_THRESHOLD, encoder=False,
         requires=has_ioi_names, requirement="an unembedding and a tokenizer with three single-token IOI names",
         null_reason="it scores its own IOI prompts, which a shuffled probe leaves as they are",
         evidence="attention from the final position to the IO name times its OV top-5 copy score, mean over "
                  "16 IOI prompts (single-token names only)", citation="Wang et al. (2022)"),
)
