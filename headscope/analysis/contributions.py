"""What each input position contributes to each residual position, layer by layer.

A layer's attention output splits exactly by input position and head:

    attn_i = sum_h sum_j A_h[i, j] f_h(x_j) + b_O,     f_h(x_j) = v_h(j) W_O^h,

with v_h(j) = norm(x_j) W_V^h + b_V read through head h's key/value head (GQA). With the residual x_i
added to the term j = i this is the decomposition that ALTI, information-flow routes, norm-based attention
and value zeroing all start from; they differ in how a term is scored:

- proximity (ALTI, routes): max(0, ||y_i||_1 - ||y_i - c||_1) for a term c of the sublayer output y_i,
  normalised over the terms of row i. Routes keep heads apart; ALTI sums them per input position.
- norm (Kobayashi et al.): ||c||_2; per head A_h[i, j] ||f_h(x_j)||_2.
- value zeroing (Mohebbi et al.): the cosine distance between the layer's output row i and the same row
  when v_j is zeroed for every query; since keys are untouched that run is the actual one minus c_ij, so
  only the rest of the layer (norms, MLP) is re-run on the changed rows.

Residual layouts are handled as the papers do: in a pre-norm block the attention reads norm(x_j) and the
residual is x_i itself; in a post-norm block (BERT, ALTI's own setting) the norm after the sum is linear
once its row scale is fixed, so every term is passed through w (c - mean c) / s_i (ALTI's decomposition of
LayerNorm); in a parallel block (GPT-NeoX) the MLP reads the same x_i as attention and is one more term
of the block's output; a norm on a sublayer's output (Gemma's sandwich, OLMo 2) is linearised the same
way, on the head terms alone, since the residual bypasses it. The pattern is the model's own (windows,
soft-capping, learned sinks: a sink takes mass and sends no term). The final norm before the unembedding
stays outside: routes end at the final residual. Sums equal the actual outputs up to the biases (b_O, the
norm's b), which belong to no input.

Nothing of shape (pos, pos, head, d_model) is ever formed: every score is computed for a chunk of query
rows at a time, sized so a chunk's (head, rows, keys, d_model) terms fit in `max_memory` bytes.

References
----------
Kobayashi, Kuribayashi, Yokoi & Inui (2020), "Attention is Not Only a Weight: Analyzing Transformers
with Vector Norms", EMNLP.
Ferrando, Gállego & Costa-jussà (2022), "Measuring the Mixing of Contextual Information in the
Transformer", EMNLP (ALTI).
Mohebbi, Zuidema, Chrupała & Alishahi (2023), "Quantifying Context Mixing in Transformers", EACL
(value zeroing).
Ferrando & Voita (2024), "Information Flow Routes: Automatically Interpreting Language Models at Scale",
EMNLP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from headscope.errors import InputError
from headscope.model.attention import attention_bias
from headscope.model.transformer import HookedTransformer

CONTRIBUTION_MEMORY = 256 * 2**20  # bytes for one chunk's terms; a few rows of a 2048-token prompt
TOKEN_METHODS = ("alti", "norm", "value-zeroing")
_TINY = 1e-12  # a row whose terms all score 0 stays 0 instead of NaN


def capture_residuals(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """(n_layers + 1, pos, d_model): the residual stream entering each block of one prompt, and the one
    leaving the last block (before the final norm)."""
    return capture_stream(model, tokens)[0]


def capture_stream(model: HookedTransformer, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The residuals of `capture_residuals` and (n_layers, pos, d_model) MLP outputs (None without MLPs), from
    one forward pass: the MLPs are most of a block's work, so `decompose_layer` reuses their outputs."""
    tokens = _one_prompt(tokens)
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    mlps = [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)] if model.cfg.d_mlp else []
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names + mlps, return_type=None)
    residuals = torch.stack([cache[name][0] for name in names])
    return residuals, torch.stack([cache[name][0] for name in mlps]) if mlps else None


def _one_prompt(tokens: torch.Tensor) -> torch.Tensor:
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    if tokens.shape[0] != 1:
        raise InputError(f"contributions are per prompt: got a batch of {tokens.shape[0]}")
    return tokens


@dataclass(frozen=True, repr=False)
class LayerDecomposition:
    """One block of one prompt, split into the terms each input position sends each residual position.

    resid (pos, d_model) enters the block; q (pos, head, d_head) and k (pos, kv_head, d_head) are after
    RoPE; values (head, pos, d_model) is f_h(x_j) = v_h(j) W_O^h; attn_raw (pos, d_model) the heads' summed
    output with its bias, attn_out what of it reaches the residual (after a sublayer output norm); mid (pos, d_model) what attention alone makes of the residual (x + attn_out, or
    norm1 of it after a post-norm block); mlp_out (pos, d_model) or None; post (pos, d_model) leaves the block.
    """

    layer: int
    block: nn.Module
    resid: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    values: torch.Tensor
    attn_raw: torch.Tensor
    attn_out: torch.Tensor
    mid: torch.Tensor
    mlp_out: torch.Tensor | None
    post: torch.Tensor

    def __repr__(self) -> str:
        return f"LayerDecomposition(layer={self.layer}, pos={self.resid.shape[0]}, heads={self.values.shape[0]})"

    @property
    def cfg(self):
        return self.block.cfg

    @property
    def n_pos(self) -> int:
        return self.resid.shape[0]

    def pattern(self, rows: range) -> torch.Tensor:
        """(head, rows, keys) attention of the query rows `rows`, as the model's softmax made it; keys stop
        after the last row when causal."""
        queries = torch.arange(rows.start, rows.stop, device=self.q.device)
        return self.block.attn.pattern_rows(self.q[None, rows.start : rows.stop], self.k[None, : self._keys(rows)],
                                            queries)[0]

    def head_terms(self, rows: range) -> torch.Tensor:
        """(head, rows, keys, d_model): A_h[i, j] f_h(x_j) as it reaches the residual sum (through the
        linearised sublayer output norm, if any), before any norm that follows the sum."""
        pattern = self.pattern(rows)
        return self.head_map(rows)(pattern[..., None] * self.values[:, None, : pattern.shape[-1]])

    def head_map(self, rows: range) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map head terms (..., rows, keys, d_model) go through between attention and the residual sum:
        identity, or a sublayer output norm linearised at the row's scale (sandwich and output norms)."""
        if self.cfg.block_norms == "pre":
            return _identity
        return _linear_norm(self.block.ln1_post, self.attn_raw[rows.start : rows.stop])

    def _keys(self, rows: range) -> int:
        return rows.stop if self.cfg.causal else self.n_pos

    def attention_norm_map(self, rows: range) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map the terms (..., rows, keys, d_model) of the attention sublayer go through on their way
        into `mid` (identity in a pre-norm or parallel block; the post-norm's linearised norm otherwise)."""
        if not self.cfg.post_norm:
            return _identity
        return _linear_norm(self.block.ln1, self.resid[rows.start : rows.stop] + self.attn_out[rows.start : rows.stop])

    def mlp_norm_map(self, rows: range) -> Callable[[torch.Tensor], torch.Tensor]:
        """The same for the MLP sublayer's terms on their way into `post` (non-parallel blocks)."""
        if not self.cfg.post_norm:
            return _identity
        return _linear_norm(self.block.ln2, self.mid[rows.start : rows.stop] + self.mlp_out[rows.start : rows.stop])

    def finish(self, attn_raw: torch.Tensor, rows: range) -> torch.Tensor:
        """(..., rows, d_model): the block's output rows `rows` had the heads produced `attn_raw` there
        (what value zeroing re-runs; the keys, hence the pattern, are unchanged)."""
        x = self.resid[rows.start : rows.stop]
        block, cfg = self.block, self.cfg
        if cfg.parallel_attn_mlp:
            rest = self.post[rows.start : rows.stop] - self.attn_out[rows.start : rows.stop]
            return rest + attn_raw
        if cfg.post_norm:
            mid = block.ln1(x + attn_raw)
            return block.ln2(mid + block.mlp(mid)) if cfg.d_mlp else mid
        mid = x + block.ln1_post(attn_raw)
        return mid + block.ln2_post(block.mlp(block.ln2(mid))) if cfg.d_mlp else mid


def _identity(term: torch.Tensor) -> torch.Tensor:
    return term


def _linear_norm(norm: nn.Module, total: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The norm of `total` (rows, d_model) as a linear map of its terms (..., rows, keys, d_model): its row
    scale held fixed, its bias left out (Ferrando et al. 2022, sec. 3)."""
    if isinstance(norm, nn.Identity):
        return _identity
    centred = hasattr(norm, "b")  # LayerNorm centres, RMSNorm does not
    base = total - total.mean(-1, keepdim=True) if centred else total
    scale = (base.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()[:, None]  # (rows, 1, 1)

    def apply(term: torch.Tensor) -> torch.Tensor:
        term = term - term.mean(-1, keepdim=True) if centred else term
        return term / scale * norm.w

    return apply


@torch.no_grad()
def decompose_layer(model: HookedTransformer, layer: int, resid: torch.Tensor,
                    mlp_out: torch.Tensor | None = None) -> LayerDecomposition:
    """Block `layer` run on `resid` (pos, d_model), kept apart into the pieces the scores are made of; the
    block's MLP output (pos, d_model) is computed unless given (from `capture_stream`)."""
    if not 0 <= layer < model.cfg.n_layers:
        raise InputError(f"layer {layer} is outside 0..{model.cfg.n_layers - 1}", parameter="layer")
    block, cfg = model.blocks[layer], model.cfg
    rotary = block.attn.rotary.cos_sin(resid.shape[0], resid.device) if cfg.positional == "rotary" else None
    x = resid[None]  # (1, pos, d_model)
    attn_in = x if cfg.post_norm else block.ln1(x)
    q, k, v = block.attn.project_qkv(attn_in, rotary)  # (1, pos, head or kv_head, d_head)
    kv_of_head = torch.arange(cfg.n_heads, device=resid.device) // (cfg.n_heads // cfg.kv_heads)
    values = torch.einsum("phd,hdm->hpm", v[0][:, kv_of_head], block.attn.W_O)  # (head, pos, d_model)
    z = _attend(block.attn, q, k, v)[0]  # (pos, head, d_head); the projections above are reused
    attn_raw = z.flatten(1) @ block.attn.W_O.flatten(0, 1)
    if cfg.attn_out_bias:
        attn_raw = attn_raw + block.attn.b_O
    attn_out = block.ln1_post(attn_raw)
    mid = resid + attn_out
    if not cfg.d_mlp:
        mlp_out = None
    if cfg.parallel_attn_mlp:
        if cfg.d_mlp and mlp_out is None:
            mlp_out = block.mlp(block.ln2(x))[0]
        post = mid if mlp_out is None else mid + mlp_out
    else:
        if cfg.post_norm:
            mid = block.ln1(mid)
        if cfg.d_mlp and mlp_out is None:
            mlp_out = block.mlp(mid) if cfg.post_norm else block.ln2_post(block.mlp(block.ln2(mid)))
        post = mid if mlp_out is None else (block.ln2(mid + mlp_out) if cfg.post_norm else mid + mlp_out)
    return LayerDecomposition(layer, block, resid, q[0], k[0], values, attn_raw, attn_out, mid, mlp_out, post)


def _attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """z (1, pos, head, d_head) of one unpadded prompt as the model's forward makes it (fused, or explicit
    where the scores are capped), with the layer's window mask."""
    n_pos = q.shape[1]
    bias = attention_bias(n_pos, n_pos, attn.cfg.causal, None, q.dtype, q.device, attn.window)
    return attn.explicit(q, k, v, bias) if attn.needs_pattern() else attn.fused(q, k, v, bias)


def decompose(model: HookedTransformer, tokens: torch.Tensor) -> Iterator[LayerDecomposition]:
    """Every block of one prompt in turn, bottom up (one at a time, so memory holds one layer's pieces)."""
    residuals, mlp_outs = capture_stream(model, tokens)
    for layer in range(model.cfg.n_layers):
        yield decompose_layer(model, layer, residuals[layer], None if mlp_outs is None else mlp_outs[layer])


def row_chunks(rows: list[int] | range, per_row_bytes: int, max_memory: int = CONTRIBUTION_MEMORY) -> list[range]:
    """Runs of consecutive rows from `rows` (sorted), each at most `max_memory` // `per_row_bytes` long."""
    size = max(1, max_memory // max(1, per_row_bytes))
    rows = sorted(rows)
    chunks: list[range] = []
    for row in rows:
        if chunks and chunks[-1].stop == row and len(chunks[-1]) < size:
            chunks[-1] = range(chunks[-1].start, row + 1)
        else:
            chunks.append(range(row, row + 1))
    return chunks


def term_bytes(dec: LayerDecomposition) -> int:
    """Bytes one query row's (head, keys, d_model) terms and their temporaries take."""
    return 3 * dec.values.numel() * dec.values.element_size()


def proximity(total: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """(..., rows, keys): max(0, ||y_i||_1 - ||y_i - c||_1) for terms c (..., rows, keys, d_model) of the
    rows y (rows, d_model) they add up to."""
    y = total[:, None, :]
    return (y.abs().sum(-1) - (y - terms).abs().sum(-1)).clamp(min=0)


def _normalise_rows(scores: torch.Tensor) -> torch.Tensor:
    return scores / scores.sum(-1, keepdim=True).clamp(min=_TINY)


@dataclass(frozen=True, repr=False)
class SublayerScores:
    """Normalised proximities of the terms of one sublayer's output rows, for routes: heads (head, rows,
    keys); residual (rows,), the row's own input; mlp (rows,) or None, the MLP term. Each row sums to 1."""

    rows: range
    heads: torch.Tensor | None
    residual: torch.Tensor
    mlp: torch.Tensor | None

    def __repr__(self) -> str:
        return f"SublayerScores(rows={self.rows.start}..{self.rows.stop - 1})"


@torch.no_grad()
def attention_scores(dec: LayerDecomposition, rows: range) -> SublayerScores:
    """The routes scores of the attention sublayer for query rows `rows`: every head's term from every key,
    and the residual, normalised together (in a parallel block the MLP term too)."""
    mapped = dec.attention_norm_map(rows)
    parallel = dec.cfg.parallel_attn_mlp
    total = (dec.post if parallel else dec.mid)[rows.start : rows.stop]
    heads = proximity(total, mapped(dec.head_terms(rows)))  # (head, rows, keys)
    residual = proximity(total, mapped(dec.resid[rows.start : rows.stop, None]))[:, 0]
    mlp = None
    if parallel and dec.mlp_out is not None:
        mlp = proximity(total, dec.mlp_out[rows.start : rows.stop, None])[:, 0]
    norm = (heads.sum((0, 2)) + residual + (0 if mlp is None else mlp)).clamp(min=_TINY)
    return SublayerScores(rows, heads / norm[:, None], residual / norm, None if mlp is None else mlp / norm)


@torch.no_grad()
def mlp_scores(dec: LayerDecomposition, rows: range) -> SublayerScores:
    """The routes scores of a non-parallel block's MLP sublayer: the residual (the row after attention)
    and the MLP output, normalised over the two."""
    if dec.mlp_out is None or dec.cfg.parallel_attn_mlp:
        raise InputError(f"layer {dec.layer} has no separate MLP sublayer")
    mapped = dec.mlp_norm_map(rows)
    total = dec.post[rows.start : rows.stop]
    terms = torch.stack([dec.mid[rows.start : rows.stop], dec.mlp_out[rows.start : rows.stop]], dim=1)
    scores = _normalise_rows(proximity(total, mapped(terms)))  # (rows, 2)
    return SublayerScores(rows, None, scores[:, 0], scores[:, 1])


def _summed_terms(dec: LayerDecomposition, rows: range) -> torch.Tensor:
    """(rows, keys, d_model): sum_h A_h[i, j] f_h(x_j), the heads' raw output split by input position."""
    pattern = dec.pattern(rows)
    return torch.einsum("hqk,hkm->qkm", pattern, dec.values[:, : pattern.shape[-1]])


def _with_residual(dec: LayerDecomposition, rows: range) -> torch.Tensor:
    """(rows, keys, d_model): the summed terms as they reach the residual sum, plus x_i at j = i, through
    the norm after the sum (post-norm blocks)."""
    terms = dec.head_map(rows)(_summed_terms(dec, rows))
    index = torch.arange(len(rows), device=terms.device)
    terms[index, index + rows.start] += dec.resid[rows.start : rows.stop]
    return dec.attention_norm_map(rows)(terms)


def _alti_rows(dec: LayerDecomposition, rows: range) -> torch.Tensor:
    return proximity(dec.mid[rows.start : rows.stop], _with_residual(dec, rows))


def _norm_rows(dec: LayerDecomposition, rows: range) -> torch.Tensor:
    return _with_residual(dec, rows).norm(dim=-1)


def _value_zeroing_rows(dec: LayerDecomposition, rows: range) -> torch.Tensor:
    """Cosine distance of output row i from the same row with v_j zeroed: (rows, keys)."""
    removed = _summed_terms(dec, rows).transpose(0, 1)  # (keys, rows, d_model)
    changed = dec.finish(dec.attn_raw[rows.start : rows.stop] - removed, rows)  # (keys, rows, d_model)
    distance = 1 - torch.cosine_similarity(changed, dec.post[rows.start : rows.stop], dim=-1)
    distance = distance.T.clamp(min=0)
    if dec.cfg.causal:  # a later key's term is exactly 0; rounding in the MLP re-run would not be
        later = torch.arange(distance.shape[1], device=distance.device)[None, :] > torch.arange(
            rows.start, rows.stop, device=distance.device)[:, None]
        distance = distance.masked_fill(later, 0.0)
    return distance


_TOKEN_SCORES = {"alti": _alti_rows, "norm": _norm_rows, "value-zeroing": _value_zeroing_rows}


@torch.no_grad()
def raw_token_scores(dec: LayerDecomposition, method: str, max_memory: int = CONTRIBUTION_MEMORY) -> torch.Tensor:
    """(pos, pos) scores of one layer before normalisation: row i, column j is what input j gives output
    i by `method` ("alti": proximity, "norm": ||c_ij||_2, "value-zeroing": cosine distance), heads summed,
    the residual in the diagonal term (value zeroing re-runs the layer's norms and MLP)."""
    if method not in _TOKEN_SCORES:
        raise InputError(f"unknown contribution method {method!r}: use one of {', '.join(TOKEN_METHODS)}",
                         parameter="method")
    scores = torch.zeros(dec.n_pos, dec.n_pos, dtype=dec.resid.dtype, device=dec.resid.device)
    for rows in row_chunks(range(dec.n_pos), term_bytes(dec), max_memory):
        part = _TOKEN_SCORES[method](dec, rows)
        scores[rows.start : rows.stop, : part.shape[-1]] = part
    return scores


def token_scores(dec: LayerDecomposition, method: str, max_memory: int = CONTRIBUTION_MEMORY) -> torch.Tensor:
    """(pos, pos): `raw_token_scores` with every row normalised to sum to 1 (a row where no term brings the
    output closer, which happens only when biases dominate it, stays 0)."""
    return _normalise_rows(raw_token_scores(dec, method, max_memory))


def token_contributions(model: HookedTransformer, tokens: torch.Tensor, method: str = "alti",
                        max_memory: int = CONTRIBUTION_MEMORY) -> torch.Tensor:
    """(layers, pos, pos) normalised token-to-token contributions of every block of one prompt."""
    return torch.stack([token_scores(dec, method, max_memory) for dec in decompose(model, tokens)])


def chain(matrices: torch.Tensor) -> torch.Tensor:
    """(pos, pos) product M_L ... M_1 of (layers, pos, pos) contributions, as ALTI and value zeroing
    aggregate layers (rollout without adding a residual: each M already holds it)."""
    result = torch.eye(matrices.shape[-1], dtype=torch.float64, device=matrices.device)
    for matrix in matrices:
        result = matrix.double() @ result
    return result


@torch.no_grad()
def head_norms(dec: LayerDecomposition, max_memory: int = CONTRIBUTION_MEMORY) -> torch.Tensor:
    """(head, pos, pos): Kobayashi et al.'s ||A_h[i, j] f_h(x_j)||_2 of each head term as it reaches the
    residual sum, computed a chunk of rows at a time."""
    norms = torch.zeros(dec.values.shape[0], dec.n_pos, dec.n_pos, dtype=dec.resid.dtype, device=dec.resid.device)
    for rows in row_chunks(range(dec.n_pos), term_bytes(dec), max_memory):
        part = dec.head_terms(rows).norm(dim=-1)
        norms[:, rows.start : rows.stop, : part.shape[-1]] = part
    return norms
