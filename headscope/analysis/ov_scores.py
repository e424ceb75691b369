"""Weight-based head scores from the OV circuit: copying (and copy suppression), and succession.

A head moves what it reads at a source token through W_OV = W_V W_O; the *full OV circuit* pushes a token's
embedding through it and out through the unembedding, W_E W_OV W_U (rows: source tokens, columns: logits).
Neither score needs a prompt or a forward pass of the whole model.

- **OV copying score** (Elhage et al. 2021): sum(lambda_i) / sum(|lambda_i|) over the eigenvalues of the
  full OV circuit restricted to a set S of frequent tokens, W_E[S] W_OV W_U[:, S]. It lies in [-1, 1]: +1
  when every eigenvalue is positive (the head raises the logit of the token it attends to: copying), -1
  when every one is negative (it lowers it: the negative / copy-suppression heads of McDougall et al.
  2023). The |S| x |S| circuit has rank at most d_head and, by the cyclic property of eigenvalues, the same
  non-zero eigenvalues as the d_head x d_head matrix W_O (W_U[:, S] W_E[S]) W_V, which is what is
  decomposed: one d_model x d_model product per model and one small eigenproblem per head.
  S defaults to the first `DEFAULT_N_TOKENS` non-special ids of the vocabulary. Byte-pair vocabularies
  (SmolLM2's, GPT-2's) number their merges in the order they were learned, most frequent pair first, so
  vocabulary order is a proxy for frequency, not a count from a corpus; pass `tokens` to choose S.
- **Succession score** (Gould et al. 2024): on ordinal sequences (numbers, letters, days, months) the
  *effective embedding* of each item, W_E + MLP0(W_E) (the token embedding passed through the first MLP,
  the attention of layer 0 left out, as Gould et al. define it), goes through the head's OV circuit and the
  unembedding; the score is the fraction of items whose top-1 logit, among the tokens of the same
  sequence, is their successor (Monday -> Tuesday). Only items that are single tokens are used: each word
  is tried with a leading space (how it reads inside a sentence) and bare, the form with more single-token
  items wins, and the items, pairs and form used are reported. Chance is about 1/len(sequence).

Weights as the model applies them: with grouped-query attention a head reads through the W_V of its
key/value head; the input norm's weight (and LayerNorm's centring) is folded into W_V and a
post-attention norm's weight into W_O exactly as `composition` folds them (its `reading_weights` and
`writing_weights`); the embedding carries the model's embedding scale (Gemma). The final norm's weight
(and centring) IS applied to the unembedding, as TransformerLens' `fold_ln` folds it: it is a fixed
per-dimension map on every path to the logits, so leaving it out would score a different circuit than
the one the model runs (SmolLM2's final norm weights range from 0.87 to 3.3). The
norms' divisions by the RMS or standard deviation are left out: each is a positive factor per source
token, which multiplies a row of the circuit and so changes neither which logit of a row is largest (the
succession score is exact) nor the sign of a diagonal circuit (copying), as in Elhage et al. and TL.
Biases are left out too (they add the same vector to every row). Tied and untied unembeddings are both
read through `model.W_U`; encoders without an unembedding are refused.

References
----------
Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits", Transformer Circuits Thread
(the OV circuit and the copying eigenvalue score sum(lambda) / sum(|lambda|)).
McDougall, Conmy, Rushing, McGrath and Nanda (2023), "Copy Suppression: Comprehensively Understanding an
Attention Head", arXiv:2310.04625 (negative copying: heads whose OV circuit lowers the attended token).
Gould, Ong, Ogden and Conmy (2024), "Successor Heads: Recurring, Interpretable Attention Heads In The
Wild", ICLR 2024 (the succession score on effective embeddings).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from headscope.analysis.composition import reading_weights, writing_weights
from headscope.errors import InputError
from headscope.heads import head_name, parse_head
from headscope.io import strict_json
from headscope.model.transformer import HookedTransformer
from headscope.notebook import html_table, short_repr
from headscope.provenance import provenance

DEFAULT_N_TOKENS = 1000  # the frequent-token set S of the copying score, by default
ORDINAL_SEQUENCES: dict[str, tuple[str, ...]] = {
    "numbers": tuple(str(i) for i in range(1, 21)),
    "letters": tuple(chr(c) for c in range(ord("A"), ord("Z") + 1)),
    "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "months": ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December"),
}


# ----- the circuit's pieces ------------------------------------------------------------------------------
def _require_unembedding(model: HookedTransformer) -> None:
    if not model.cfg.has_unembed:
        raise InputError("OV circuit scores read the unembedding; this model (an encoder) has none")


def _check_ids(model: HookedTransformer, ids: Sequence[int], what: str) -> list[int]:
    ids = [int(i) for i in ids]
    if not ids:
        raise InputError(f"{what} is empty")
    bad = [i for i in ids if not 0 <= i < model.cfg.d_vocab]
    if bad:
        raise InputError(f"token id {bad[0]} in {what} is out of range for a vocabulary of {model.cfg.d_vocab}")
    if len(set(ids)) != len(ids):
        raise InputError(f"{what} repeats a token id: each token may appear once")
    return ids


@torch.no_grad()
def token_embeddings(model: HookedTransformer, ids: Sequence[int]) -> torch.Tensor:
    """(len(ids), d_model) float64: the embedding rows as the model adds them to the residual stream (times its
    embedding scale, through its embedding norm if it has one), without position or segment embeddings."""
    x = model.embed.W_E[torch.as_tensor(list(ids), device=model.device)]
    if model.cfg.embed_scale is not None:  # rounded to the weights' dtype, as the forward pass does
        x = x * torch.tensor(model.cfg.embed_scale, dtype=x.dtype)
    if model.cfg.embed_norm:
        x = model.embed_ln(x)
    return x.double()


@torch.no_grad()
def effective_embeddings(model: HookedTransformer, ids: Sequence[int]) -> torch.Tensor:
    """(len(ids), d_model) float64: Gould et al.'s effective embedding W_E + MLP0(W_E), the token embedding
    passed through block 0's MLP with its norms (the attention of layer 0 left out); W_E alone when the
    model has no MLP."""
    x = token_embeddings(model, ids).to(model.embed.W_E.dtype)
    block = model.blocks[0]
    if not model.cfg.d_mlp:
        return x.double()
    if model.cfg.post_norm:  # BERT's layout: norm(x + mlp(x))
        return block.ln2(x + block.mlp(x)).double()
    return (x + block.ln2_post(block.mlp(block.ln2(x)))).double()


@torch.no_grad()
def folded_unembedding(model: HookedTransformer, ids: Sequence[int]) -> torch.Tensor:
    """(d_model, len(ids)) float64: the unembedding columns of `ids` with the final norm's weight folded in
    (and LayerNorm's centring, a projection), as TransformerLens' `fold_ln` folds them."""
    _require_unembedding(model)
    W_U = model.W_U[:, torch.as_tensor(list(ids), device=model.device)].double()
    if model.cfg.final_norm and model.cfg.norm != "none":
        W_U = W_U * model.ln_final.w.detach().double()[:, None]
        if model.cfg.norm == "layernorm":  # (x - mean x) W = x (W - mean over d_model of W)
            W_U = W_U - W_U.mean(0, keepdim=True)
    return W_U


def _ov_weights(model: HookedTransformer, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W_V (head, d_model, d_head) and W_O (head, d_head, d_model) of every query head of a layer, float64,
    with the norms folded in as `composition` folds them."""
    return reading_weights(model, layer)[2], writing_weights(model, layer)[1]


@torch.no_grad()
def ov_circuit(model: HookedTransformer, layer: int, ids: Sequence[int], source: torch.Tensor | None = None
               ) -> torch.Tensor:
    """(heads, rows, len(ids)) float64: every head of `layer`'s OV circuit, `source` W_V W_O W_U[:, ids], norm
    weights folded in; `source` (rows, d_model) defaults to the token embeddings of `ids` (the full OV circuit
    on them, rows = source tokens, columns = logits)."""
    ids = _check_ids(model, ids, "the token set")
    if not 0 <= layer < model.cfg.n_layers:
        raise InputError(f"layer {layer} does not exist: the model has {model.cfg.n_layers} layers")
    source = token_embeddings(model, ids) if source is None else source.double()
    W_V, W_O = _ov_weights(model, layer)
    return (source @ W_V) @ W_O @ folded_unembedding(model, ids)


# ----- OV copying ----------------------------------------------------------------------------------------
def frequent_tokens(model: HookedTransformer, n: int = DEFAULT_N_TOKENS) -> list[int]:
    """The first `n` token ids that are not special (BOS, EOS, chat markers), in vocabulary order: the default
    frequent-token set of the copying score (byte-pair merges are numbered most frequent first)."""
    if n < 1:
        raise InputError(f"the number of frequent tokens must be at least 1, got {n}")
    special = set(model.tokenizer.special_ids) if model.tokenizer is not None else set()
    special |= {model.bos_token_id} if model.bos_token_id is not None else set()
    return [i for i in range(model.cfg.d_vocab) if i not in special][:n]


@torch.no_grad()
def ov_eigenvalues(model: HookedTransformer, tokens: Sequence[int] | None = None) -> torch.Tensor:
    """(layers, heads, d_head) complex128: the eigenvalues of W_O W_U[:, S] W_E[S] W_V per head, which are the
    non-zero eigenvalues of the full OV circuit W_E[S] W_V W_O W_U[:, S] on the tokens S (padded with zeros
    when |S| < d_head). `tokens` defaults to `frequent_tokens(model)`."""
    _require_unembedding(model)
    ids = _check_ids(model, frequent_tokens(model) if tokens is None else tokens, "the token set")
    middle = folded_unembedding(model, ids) @ token_embeddings(model, ids)  # (d_model, d_model)
    layers = []
    for layer in range(model.cfg.n_layers):
        W_V, W_O = _ov_weights(model, layer)
        small = W_O @ middle @ W_V  # (head, d_head, d_head)
        layers.append(torch.linalg.eigvals(small.cpu()))
    return torch.stack(layers)


def copying_score_from_eigenvalues(eigenvalues: torch.Tensor) -> torch.Tensor:
    """sum(lambda) / sum(|lambda|) over the last axis (real: complex eigenvalues of a real matrix come in
    conjugate pairs), in [-1, 1]; 0 for a circuit whose eigenvalues are all zero."""
    total = eigenvalues.sum(-1).real
    size = eigenvalues.abs().sum(-1)
    return torch.where(size > 0, total / size.clamp(min=torch.finfo(size.dtype).tiny), torch.zeros_like(total))


def ov_copying_scores(model: HookedTransformer, tokens: Sequence[int] | None = None) -> torch.Tensor:
    """(layers, heads) float64 in [-1, 1]: Elhage et al.'s OV copying score of every head on the token set
    `tokens` (default `frequent_tokens(model)`); positive heads copy, negative ones suppress copies."""
    return copying_score_from_eigenvalues(ov_eigenvalues(model, tokens))


# ----- succession ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrdinalSequence:
    """One ordinal sequence as scored: its items' labels and token ids (single tokens, in order), the
    (item, successor) index pairs scored (neighbours in the original sequence, both kept), and the word
    form used ("leading space", "bare" or "ids")."""

    name: str
    labels: tuple[str, ...]
    ids: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    form: str

    @property
    def chance(self) -> float:
        """The score of a head that ranks the sequence's tokens at random: 1 / len(ids)."""
        return 1.0 / len(self.ids)

    def to_dict(self) -> dict:
        """{"labels", "ids", "pairs", "form"} for a result's meta."""
        return {"labels": list(self.labels), "ids": list(self.ids), "pairs": [list(p) for p in self.pairs],
                "form": self.form}


def ordinal_sequences(model: HookedTransformer, sequences: Mapping[str, Sequence[str | int]] | None = None
                      ) -> dict[str, OrdinalSequence]:
    """The sequences to score, by name: words (default `ORDINAL_SEQUENCES`) tokenized with the model's
    tokenizer, each in the form (leading space or bare) with more single-token items, items that are not one
    token dropped; or token ids, used as given. Sequences with no scorable pair are left out; none at all
    is an InputError."""
    chosen = {}
    for name, items in (ORDINAL_SEQUENCES if sequences is None else sequences).items():
        items = list(items)
        if items and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            ids = _check_ids(model, items, f"the sequence {name!r}")
            seq = OrdinalSequence(name, tuple(str(i) for i in ids), tuple(ids),
                                  tuple((k, k + 1) for k in range(len(ids) - 1)), "ids")
        elif all(isinstance(i, str) for i in items):
            seq = _tokenized_sequence(model, name, items)
        else:
            raise InputError(f"the sequence {name!r} must be all words or all token ids")
        if seq.pairs:
            chosen[name] = seq
    if not chosen:
        raise InputError("no ordinal sequence has two neighbouring items that are single tokens")
    return chosen


def _tokenized_sequence(model: HookedTransformer, name: str, words: list[str]) -> OrdinalSequence:
    """The words as single tokens in the better of the two forms, and the neighbour pairs that survive."""
    if model.tokenizer is None:
        raise InputError(f"the sequence {name!r} is given as words and this model has no tokenizer: pass ids")
    backend = model.tokenizer.backend
    unknown = getattr(backend.model, "unk_token", None)
    unknown_id = backend.token_to_id(unknown) if unknown else None  # [UNK] is one token but not the word
    best = None
    for form, prefix in (("leading space", " "), ("bare", "")):
        kept = []
        for position, word in enumerate(words):
            ids = model.tokenizer.encode(prefix + word, prepend_bos=False)
            if len(ids) == 1 and ids[0] != unknown_id:
                kept.append((position, word, ids[0]))
        if best is None or len(kept) > len(best[1]):
            best = (form, kept)
    form, kept = best
    _check_ids(model, [token for _, _, token in kept], f"the sequence {name!r}")  # distinct words, distinct ids
    pairs = tuple((k, k + 1) for k in range(len(kept) - 1) if kept[k + 1][0] == kept[k][0] + 1)
    return OrdinalSequence(name, tuple(w for _, w, _ in kept), tuple(t for _, _, t in kept), pairs, form)


@torch.no_grad()
def succession_hits(model: HookedTransformer, sequence: OrdinalSequence) -> torch.Tensor:
    """(layers, heads, pairs) bool: whether each item's top-1 logit among the sequence's tokens, through each
    head's OV circuit from its effective embedding, is its successor."""
    _require_unembedding(model)
    ids = list(sequence.ids)
    source = effective_embeddings(model, [ids[a] for a, _ in sequence.pairs])  # (pairs, d_model)
    successors = torch.tensor([b for _, b in sequence.pairs])
    hits = [ov_circuit(model, layer, ids, source).argmax(-1).cpu() == successors  # (head, pairs)
            for layer in range(model.cfg.n_layers)]
    return torch.stack(hits)


def successor_scores(model: HookedTransformer, sequences: Mapping[str, Sequence[str | int]] | None = None
                     ) -> "HeadScores":
    """Gould et al.'s succession score of every head: `scores` (layers, heads), the fraction of all scored
    (item, successor) pairs whose successor is the top-1 logit within its sequence, and `by_task`, the same
    per sequence. `sequences`: words or token ids by name (default `ORDINAL_SEQUENCES`, tokenized); the
    meta names the items, pairs and forms used and the chance level."""
    chosen = ordinal_sequences(model, sequences)
    hits = {name: succession_hits(model, seq) for name, seq in chosen.items()}
    n_pairs = sum(len(seq.pairs) for seq in chosen.values())
    pooled = sum(h.sum(-1) for h in hits.values()).double() / n_pairs
    chance = sum(len(seq.pairs) * seq.chance for seq in chosen.values()) / n_pairs
    meta = {"sequences": {name: seq.to_dict() for name, seq in chosen.items()}, "pairs": n_pairs,
            "chance": chance, "embedding": "W_E + MLP0(W_E)", **provenance(model)}
    return HeadScores(model.name, "succession", "fraction of items whose top-1 logit within the sequence is "
                      "the successor", pooled, meta, {name: h.double().mean(-1) for name, h in hits.items()})


def ov_copying(model: HookedTransformer, tokens: Sequence[int] | None = None) -> "HeadScores":
    """`ov_copying_scores` as a result with its meta (the token set and how it was chosen)."""
    ids = frequent_tokens(model) if tokens is None else [int(t) for t in tokens]
    chosen = (f"the first {len(ids)} non-special ids (vocabulary order as a proxy for frequency)"
              if tokens is None else "given by the caller")
    meta = {"tokens": ids, "token_set": chosen, "embedding": "W_E", **provenance(model)}
    return HeadScores(model.name, "ov_copying", "sum(eigenvalues) / sum(|eigenvalues|) of the OV circuit",
                      ov_copying_scores(model, ids), meta)


# ----- the result ----------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False, eq=False)
class HeadScores:
    """One weight-based score per head: `scores` (layers, heads) float64, optionally per task (`by_task`, name
    -> (layers, heads)), with the model, the method ("ov_copying" or "succession"), the metric in words and
    the meta (what was scored, provenance)."""

    model: str
    method: str
    metric: str
    scores: torch.Tensor
    meta: dict
    by_task: dict[str, torch.Tensor] = field(default_factory=dict)

    def top(self, k: int = 10, lowest: bool = False) -> list[tuple[str, float]]:
        """The k heads with the highest (or lowest) score, as (name, score), best first."""
        flat = self.scores.flatten()
        order = torch.argsort(flat, descending=not lowest)[:k]
        n_heads = self.scores.shape[1]
        return [(head_name(int(i) // n_heads, int(i) % n_heads), float(flat[i])) for i in order]

    def rows(self) -> list[dict]:
        """One dict per head, in layer then head order: {"heads": [name], "score", "by_task"?}."""
        rows = []
        for layer in range(self.scores.shape[0]):
            for head in range(self.scores.shape[1]):
                row = {"heads": [head_name(layer, head)], "score": float(self.scores[layer, head])}
                if self.by_task:
                    row["by_task"] = {name: float(s[layer, head]) for name, s in self.by_task.items()}
                rows.append(row)
        return rows

    def to_json(self) -> str:
        """{"model", "method", "metric", "results": [{"heads": ["L0H1"], "score", "by_task"?}], "meta"}."""
        return strict_json({"model": self.model, "method": self.method, "metric": self.metric,
                            "results": self.rows(), "meta": self.meta})

    @classmethod
    def from_json(cls, text: str | bytes) -> "HeadScores":
        """A result written by `to_json`."""
        try:
            data = json.loads(text)
            heads = [parse_head(row["heads"][0]) for row in data["results"]]
            shape = (max(l for l, _ in heads) + 1, max(h for _, h in heads) + 1)
            scores = torch.full(shape, float("nan"), dtype=torch.float64)
            tasks = {name: scores.clone() for name in data["results"][0].get("by_task", {})}
            for (layer, head), row in zip(heads, data["results"]):
                scores[layer, head] = float("nan") if row["score"] is None else row["score"]
                for name in tasks:
                    tasks[name][layer, head] = row["by_task"][name]
            return cls(str(data["model"]), str(data["method"]), str(data["metric"]), scores, dict(data["meta"]),
                       tasks)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as err:
            raise InputError(f"not a headscope head-score result: {err}") from err

    def __repr__(self) -> str:
        return short_repr(self, {"model": self.model, "method": self.method, "scores": self.scores,
                                 "tasks": list(self.by_task)})

    def _repr_html_(self) -> str:
        rows = [{"head": name, "score": score} for name, score in self.top(len(self.scores.flatten()))]
        return html_table(rows, caption=f"{self.model}: {self.method} ({self.metric}); highest first")
