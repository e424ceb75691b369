"""Retrieval heads (Wu et al. 2024): heads whose top-1 attention copies a needle out of a long haystack.

The prompts (`needle_prompts`, seeded) are a copy task on a needle in a haystack. A needle of
`needle_len + 1` distinct random token ids (a cue n_0 and the tokens n_1 .. n_k to copy, k = `needle_len`)
is inserted at a random depth (uniform over the haystack, seeded) into a haystack of random token ids that
never equal a needle token; the prompt then ends with the needle again, n_0 .. n_{k-1}, so the model,
teacher-forced, continues it:

    [BOS] haystack[:d]  n_0 n_1 .. n_k  haystack[d:]  n_0 n_1 .. n_{k-1}        (`context_len` tokens)

Each of the last k positions is a *copy step*: its next token is needle token n_{j+1}, whose one place in
the prompt before the tail is inside the needle. As in Wu et al., a head scores 1/k at a copy step when
its top-1 attention (the argmax over keys of its pattern row) falls on that place, the very token being
copied; a head's retrieval score is the mean over prompts, in [0, 1], and it is a retrieval head at 0.1
(the paper's threshold). Wu et al. let the model generate the needle and count only tokens it copies
correctly; teacher forcing scores every step, whatever the model predicts.

Only the copy-step rows of each pattern are computed: a hook keeps each layer's queries at the k copy
positions and, when the layer's keys arrive, scores them against every key, (k, n) per head, with the
model's own soft-capping, causal and window masks and sink logit (`Attention.pattern_rows`). Memory stays O(n) per layer however long the context; the forward pass itself
takes the fused path, which never forms the n x n pattern.

The role is not scored by every `classify_heads`: it needs its own long prompts (up to the model's
context) rather than the probe dataset. `RETRIEVAL_ROLE` is an optional built-in role
(`role_registry.OPTIONAL_ROLES`): chosen by name, `classify_heads(model, roles=["retrieval"])` or
from the command line, or registered, `register_role(RETRIEVAL_ROLE)`, and then
`classify_heads` reports it like any other role (its score function ignores the probe and uses
`retrieval_scores`' defaults).

References
----------
Wu, Wang, Xiao, Peng and Fu (2024), "Retrieval Head Mechanistically Explains Long-Context Factuality",
arXiv:2404.15574 (the retrieval score and its 0.1 threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headscope.analysis.ov_scores import HeadScores
from headscope.analysis.role_registry import Role
from headscope.errors import InputError
from headscope.model.transformer import HookedTransformer
from headscope.provenance import provenance

THRESHOLD = 0.1  # Wu et al. (2024)
DEFAULT_CONTEXT_LEN = 1024
DEFAULT_NEEDLE_LEN = 16
DEFAULT_N_PROMPTS = 4


@dataclass(frozen=True)
class NeedlePrompts:
    """`tokens` (prompts, context_len) int64 and `needle_start` (prompts,) int64, the position of each
    needle's cue n_0; the copy steps are the last `needle_len` positions of every prompt."""

    tokens: torch.Tensor
    needle_start: torch.Tensor
    needle_len: int

    def copy_queries(self) -> torch.Tensor:
        """(needle_len,) the copy-step query positions, the same in every prompt."""
        n = self.tokens.shape[1]
        return torch.arange(n - self.needle_len, n)

    def targets(self) -> torch.Tensor:
        """(prompts, needle_len): where each copy step's next token stands inside the needle."""
        return self.needle_start[:, None] + 1 + torch.arange(self.needle_len)[None, :]


def needle_prompts(n_prompts: int, context_len: int, needle_len: int, vocab_size: int, *, seed: int = 0,
                   bos_token_id: int | None = None, exclude_ids=()) -> NeedlePrompts:
    """`n_prompts` needle-in-a-haystack copy prompts of `context_len` tokens (see the module docstring); ids
    are drawn from [0, vocab_size) less `exclude_ids` (pass the special tokens) and BOS."""
    for name, value, low in (("n_prompts", n_prompts, 1), ("needle_len", needle_len, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer of at least {low}, got {value!r}")
    bos = [] if bos_token_id is None else [int(bos_token_id)]
    fixed = len(bos) + 2 * needle_len + 1
    if isinstance(context_len, bool) or not isinstance(context_len, int) or context_len < fixed + 1:
        raise InputError(f"context_len={context_len!r} leaves no haystack for a needle of {needle_len} tokens: "
                         f"it needs at least {fixed + 1}")
    excluded = set(int(i) for i in exclude_ids) | set(bos)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in excluded], dtype=torch.int64)
    if len(allowed) < needle_len + 2:
        raise InputError(f"a vocabulary of {len(allowed)} usable ids cannot hold a needle of {needle_len + 1} "
                         "distinct tokens and a haystack")
    generator = torch.Generator().manual_seed(seed)
    hay_len = context_len - fixed
    rows, starts = [], []
    for _ in range(n_prompts):
        order = allowed[torch.randperm(len(allowed), generator=generator)]
        needle, rest = order[: needle_len + 1], order[needle_len + 1:]
        hay = rest[torch.randint(len(rest), (hay_len,), generator=generator)]
        depth = int(torch.randint(hay_len + 1, (1,), generator=generator))
        rows.append(torch.cat((torch.tensor(bos, dtype=torch.int64), hay[:depth], needle, hay[depth:],
                               needle[:needle_len])))
        starts.append(len(bos) + depth)
    return NeedlePrompts(torch.stack(rows), torch.tensor(starts), needle_len)


def _qk_hooks(model: HookedTransformer, layer: int) -> tuple[str, str]:
    """The hooks carrying a layer's queries and keys as the scores use them: after RoPE, else after QK-norm."""
    prefix = f"blocks.{layer}.attn."
    if model.cfg.positional == "rotary":
        return prefix + "hook_rot_q", prefix + "hook_rot_k"
    if model.cfg.qk_norm != "none":
        return prefix + "q_norm.hook_normalized", prefix + "k_norm.hook_normalized"
    return prefix + "hook_q", prefix + "hook_k"


@torch.no_grad()
def retrieval_hits(model: HookedTransformer, prompts: NeedlePrompts) -> torch.Tensor:
    """(prompts, n_layers, n_heads): each head's retrieval score on each prompt, the fraction of copy steps
    whose top-1 attention falls on the needle token being copied. One prompt per forward pass."""
    queries = prompts.copy_queries()
    targets = prompts.targets()
    hits = torch.zeros(len(prompts.tokens), model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)
    kept_q, current = {}, {"prompt": 0}

    def keep_q(q, hook):  # q comes before k in every layer: keep only the copy-step rows until k arrives
        kept_q[hook.name] = q[:, queries.to(q.device)]

    def score_k(k, hook):
        layer = int(hook.name.split(".")[1])
        q = kept_q.pop(_qk_hooks(model, layer)[0])
        top = model.blocks[layer].attn.pattern_rows(q, k, queries.to(q.device))[0].argmax(-1).cpu()  # (head, step)
        prompt = current["prompt"]
        hits[prompt, layer] = (top == targets[prompt][None, :]).double().mean(-1)

    fwd_hooks = []
    for layer in range(model.cfg.n_layers):
        q_name, k_name = _qk_hooks(model, layer)
        fwd_hooks += [(q_name, keep_q), (k_name, score_k)]
    with model.hooks(fwd_hooks):
        for index, tokens in enumerate(prompts.tokens):
            current["prompt"] = index
            model(tokens[None].to(model.device), return_type=None)
    return hits


def _check_model(model) -> None:
    if not isinstance(model, HookedTransformer):
        raise InputError(f"retrieval scores need a headscope HookedTransformer, got {type(model).__name__}")
    if not model.cfg.causal:
        raise InputError("retrieval heads are defined on a causal model copying a needle; this model is "
                         "bidirectional")


def model_needle_prompts(model: HookedTransformer, n_prompts: int, context_len: int | None, needle_len: int,
                         seed: int) -> NeedlePrompts:
    """`needle_prompts` with the model's vocabulary, BOS and special tokens; context_len None: the default
    length cut to the model's context (n_ctx)."""
    tokenizer = model.tokenizer
    bos = None
    if tokenizer is not None and tokenizer.resolve_bos(None):
        bos = tokenizer.bos_token_id
    specials = tokenizer.special_ids if tokenizer is not None else ()
    context_len = min(DEFAULT_CONTEXT_LEN, model.cfg.n_ctx) if context_len is None else context_len
    if isinstance(context_len, int) and context_len > model.cfg.n_ctx:
        raise InputError(f"context_len={context_len} is longer than the model's context of {model.cfg.n_ctx}")
    return needle_prompts(n_prompts, context_len, needle_len, model.cfg.d_vocab, seed=seed, bos_token_id=bos,
                          exclude_ids=specials)


def retrieval_scores(model: HookedTransformer, *, n_prompts: int = DEFAULT_N_PROMPTS,
                     context_len: int | None = None, needle_len: int = DEFAULT_NEEDLE_LEN,
                     seed: int = 0) -> HeadScores:
    """Every head's retrieval score (Wu et al. 2024) on `n_prompts` seeded needle prompts of `context_len`
    tokens (None: `DEFAULT_CONTEXT_LEN` or the model's context if shorter; longer than it is refused) with needles of `needle_len` copied
    tokens: a `HeadScores` (scores (n_layers, n_heads) in [0, 1]; `by_task` holds each prompt's scores)."""
    _check_model(model)
    prompts = model_needle_prompts(model, n_prompts, context_len, needle_len, seed)
    hits = retrieval_hits(model, prompts)
    meta = {"n_prompts": n_prompts, "context_len": int(prompts.tokens.shape[1]), "needle_len": needle_len,
            "seed": seed, "needle_start": prompts.needle_start.tolist(), "threshold": THRESHOLD,
            "prompts": "random-token haystack, needle of distinct random tokens at a random depth, then the "
                       "needle again (teacher-forced copy)", **provenance(model)}
    return HeadScores(model.name, "retrieval", "fraction of copy steps whose top-1 attention falls on the "
                      "needle token being copied", hits.mean(0), meta,
                      {f"prompt{i}": h for i, h in enumerate(hits)})


def retrieval_role_score(model: HookedTransformer, dataset=None) -> torch.Tensor:
    """The role's score function: `retrieval_scores` with its defaults, (n_layers, n_heads); the probe
    dataset `classify_heads` passes is not used (the role brings its own needle prompts)."""
    return retrieval_scores(model).scores


RETRIEVAL_ROLE = Role("retrieval", score=retrieval_role_score, threshold=THRESHOLD, encoder=False,
                      null_reason="its own needle prompts; Wu et al.'s threshold alone",
                      evidence="top-1 attention on the needle token being copied, needle-in-a-haystack copy "
                               f"prompts of {DEFAULT_CONTEXT_LEN} tokens", citation="Wu et al. (2024)")
