"""Copy suppression heads (McDougall et al. 2023): attention to earlier copies of the token being predicted,
through an OV circuit that lowers the logit of what it attends to.

McDougall et al. define copy suppression as: if components in earlier layers predict a token, and this
token appears earlier in the context, the head attends to it there and suppresses it (GPT-2 small's
L10H7). The `copy_suppression` role measures both halves:

- **attention half**, per prompt: for a head of layer L, the prediction at query i is the top-1 token of the
  logit lens at L's input (the residual stream `blocks.L.hook_resid_pre` through the final norm and the
  unembedding): what the earlier layers predict there, as the paper takes it, rather than the whole model's
  output, which the head itself changes. The query counts when that token stands at some earlier real
  position j < i (BOS left out), and the head's mass there is sum_j A[i, j] over every such j. The
  prompt's value is the mean over its counted queries, in [0, 1].
- **OV half**: the head's OV copying score is at most -0.9 (it holds `negative_copying`,
  `circuit_roles.COPYING_THRESHOLD`): its full OV circuit lowers the logit of the token attended to.

The score is the attention mass times 1 when the OV half holds, else 0 (as Wang et al.'s name-mover score
is attention times a 0/1 copy test), the mean over prompts with a bootstrap interval. A head holds the role
when it is at least `THRESHOLD` = 0.3 and clears its null. 0.3: the counted queries' targets are a few
positions among the dozens a query sees (at 64 tokens a uniform head puts about 2 / i on them), and
McDougall et al.'s L10H7 puts most of its attention on the predicted token when it acts; a third of the
attention on those few positions, on average over every counted query, is far from chance and below what
a head doing this most of the time scores. It is the name-mover cut-off too.

Null: the shuffled control scored at the probe's positions (`score(..., plan_dataset=probe)`): the targets
(i, j) come from the probe (its tokens and its logit-lens predictions) and the head's attention from the
same prompts with their tokens shuffled. A head that attends there because of the tokens (the predicted
token is at j) loses its target on the control; a head that attends there by position (a fixed offset that
happens to land on the copies of repeated tokens) scores as high on the control and gets no role. Scoring
the control at its own predicted copies instead would measure the same mechanism again.

Cost. Only layers holding a negative-copying head are hooked; a model with none (random weights, say) runs
no forward pass and scores 0. Otherwise the probe takes one forward pass per few prompts (the logit lens
and the pattern of the hooked layers in the same pass) and the control two (the probe's predictions, then
the control's pattern). That is why the role is an optional built-in role (`role_registry.OPTIONAL_ROLES`),
scored when chosen (`classify_heads(roles=[..., "copy_suppression"])`), not by every classification.
Encoders are not scored (no unembedding, no next token).

References
----------
McDougall, Conmy, Rushing, McGrath and Nanda (2023), "Copy Suppression: Comprehensively Understanding an
Attention Head", arXiv:2310.04625.
Wang, Variengien, Conmy, Shlegeris and Steinhardt (2022), "Interpretability in the Wild", arXiv:2211.00593.
nostalgebraist (2020), "interpreting GPT: the logit lens", LessWrong (the residual stream read through the
unembedding).
"""

from __future__ import annotations

import torch

from headscope.analysis.circuit_roles import COPYING_THRESHOLD, has_unembedding
from headscope.analysis.ov_scores import ov_copying_scores
from headscope.analysis.role_registry import Role, pool_prompts
from headscope.capture.datasets import TokenDataset
from headscope.capture.statistics import EntryPlan
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer

THRESHOLD = 0.3
PROMPTS_AT_ONCE = 4  # prompts per forward pass at most
PATTERN_MEMORY = 256 * 2**20  # bytes of one layer's pattern of the prompts scored at once (one prompt at least)
LOGIT_ROWS = 512  # positions unembedded at once by the logit lens


def negative_heads(model: HookedTransformer) -> torch.Tensor:
    """(n_layers, n_heads) bool: the heads whose OV copying score is at most -COPYING_THRESHOLD."""
    return -ov_copying_scores(model) >= COPYING_THRESHOLD


def predicted_copies(tokens: torch.Tensor, real: torch.Tensor, predictions: torch.Tensor, has_bos: bool
                     ) -> EntryPlan:
    """The entries (b, i, j) with j < i, both real, j not BOS, and tokens[b, j] == predictions[b, i]; a query
    counts when it has at least one. tokens, real, predictions: (batch, pos)."""
    n = tokens.shape[1]
    match = (tokens[:, None, :] == predictions[:, :, None]) & torch.ones(n, n, dtype=torch.bool).tril(-1)
    match &= real[:, None, :] & real[:, :, None]
    if has_bos:
        match[:, :, 0] = False
    b, i, j = match.nonzero(as_tuple=True)
    return EntryPlan(b, i, j, match.any(-1))


@torch.no_grad()
def logit_lens_top1(model: HookedTransformer, resid: torch.Tensor) -> torch.Tensor:
    """(batch, pos): the top-1 token of the residual stream `resid` (batch, pos, d_model) read through the
    final norm and the unembedding, `LOGIT_ROWS` positions at a time."""
    flat = resid.reshape(-1, resid.shape[-1])
    top = []
    for start in range(0, len(flat), LOGIT_ROWS):
        rows = flat[start: start + LOGIT_ROWS]
        if model.cfg.final_norm:
            rows = model.ln_final(rows)
        top.append(model.unembed_hidden(rows).argmax(-1))
    return torch.cat(top).view(resid.shape[:2]).cpu()


def _plan_mass(pattern: torch.Tensor, plan: EntryPlan) -> torch.Tensor:
    """(batch, head): the pattern's mass on the plan's entries per counted query, mean over those queries
    (NaN for a prompt with none)."""
    pattern = pattern.float().cpu()
    picked = pattern[plan.batch_idx, :, plan.query_idx, plan.key_idx]  # (entries, head)
    sums = torch.zeros(pattern.shape[:2]).index_add_(0, plan.batch_idx, picked)
    return sums.double() / plan.queries.sum(1, keepdim=True).double()


def _forward(model, tokens, mask, hooks) -> None:
    with model.hooks(hooks):
        model(tokens.to(model.device), attention_mask=None if mask is None else mask.to(model.device),
              return_type=None)


def _plans(model, tokens, mask, real, has_bos, layers, plans: dict) -> list:
    """Hooks filling `plans[layer]` from the logit lens at each of `layers`' input."""
    def predict(resid, hook):
        layer = int(hook.name.split(".")[1])
        plans[layer] = predicted_copies(tokens, real, logit_lens_top1(model, resid), has_bos)

    return [(f"blocks.{layer}.hook_resid_pre", predict) for layer in layers]


@torch.no_grad()
def copy_suppression_masses(model: HookedTransformer, dataset: TokenDataset, layers,
                            plan_dataset: TokenDataset | None = None) -> torch.Tensor:
    """(prompts, n_layers, n_heads): each head's mean attention on earlier copies of the logit-lens
    prediction (module docstring) on `dataset`, for the layers `layers` (others 0; NaN for a prompt with no
    counted query). plan_dataset: take the targets from these prompts (same shape) instead, scoring
    `dataset`'s attention at them."""
    if plan_dataset is not None and plan_dataset.tokens.shape != dataset.tokens.shape:
        raise InputError(f"plan prompts of shape {tuple(plan_dataset.tokens.shape)} do not match the scored "
                         f"prompts' {tuple(dataset.tokens.shape)}")
    cfg = model.cfg
    result = torch.zeros(len(dataset), cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    source = dataset if plan_dataset is None else plan_dataset
    at_once = max(1, min(PROMPTS_AT_ONCE, PATTERN_MEMORY // (cfg.n_heads * dataset.tokens.shape[1] ** 2 * 4)))
    for rows, tokens, mask in dataset.batches(at_once):
        plans: dict[int, EntryPlan] = {}
        plan_tokens, plan_mask = source.tokens[rows], None if source.attention_mask is None else source.attention_mask[rows]
        predict = _plans(model, plan_tokens, plan_mask, source.real[rows], source.has_bos, layers, plans)

        def score(pattern, hook, rows=rows, plans=plans):
            layer = int(hook.name.split(".")[1])
            result[rows, layer] = _plan_mass(pattern, plans[layer])

        patterns = [(f"blocks.{layer}.attn.hook_pattern", score) for layer in layers]
        if plan_dataset is None:  # resid_pre of a layer runs before its pattern: one pass does both
            _forward(model, tokens, mask, predict + patterns)
        else:
            _forward(model, plan_tokens, plan_mask, predict)
            _forward(model, tokens, mask, patterns)
    return result


def copy_suppression_scores(model: HookedTransformer, dataset: TokenDataset,
                            plan_dataset: TokenDataset | None = None) -> torch.Tensor:
    """The role's score function: (prompts, n_layers, n_heads), each head's attention mass on earlier copies
    of the predicted token times 1 if its OV copying score is at most -0.9, else 0; pooled over prompts as
    (n_layers, n_heads) when some prompt has no counted query. No forward pass without a negative head."""
    if not model.cfg.causal or not model.cfg.has_unembed:
        raise InputError("copy suppression is defined on a causal model with an unembedding; this model has none")
    gate = negative_heads(model)
    layers = [layer for layer in range(model.cfg.n_layers) if bool(gate[layer].any())]
    masses = copy_suppression_masses(model, dataset, layers, plan_dataset)
    return pool_prompts(masses * gate.double())  # a prompt may have no counted query in some layer


COPY_SUPPRESSION_ROLE = Role(
    "copy_suppression", score=copy_suppression_scores, threshold=THRESHOLD, null="shuffled", encoder=False,
    requires=has_unembedding, requirement="an unembedding",
    evidence="attention from query i on earlier copies of the top-1 logit-lens token at the head's layer input, "
             "mean over the queries with such a copy, times 1 if the OV copying score is <= -0.9 (negative_copying)",
    citation="McDougall et al. (2023), arXiv:2310.04625")
