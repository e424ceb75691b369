"""HookedTransformer: embeddings, blocks, final norm and unembedding, with TransformerLens' hook names.

`forward` runs the model; `run_with_hooks` and `run_with_cache` attach hooks for one call only.
Weights come from a loader as a `LoadedModel` (see docs/design.md for their names and shapes), or are
initialised randomly for training and tests.
"""

from __future__ import annotations

import hashlib

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from headscope.errors import InputError, ModelFormatError
from headscope.model.attention import attention_bias
from headscope.model.blocks import TransformerBlock, make_norm
from headscope.model.config import ModelConfig
from headscope.model.hooks import HookedModule, HookFn, HookPoint, NameFilter
from headscope.model.tokenizer import Tokenizer

ReturnType = Literal["auto", "logits", "hidden", "loss", None]
TokensLike = torch.Tensor | str | Sequence[str]


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(batch, pos - 1) float32 loss of predicting token i + 1 at position i, from (batch, pos, vocab) logits.

    logsumexp minus the target's logit, both along the contiguous vocabulary axis: `cross_entropy` on
    (batch, vocab, pos) would first copy the logits into that strided layout (a third of a CPU ablation
    sweep's time). The one next-token loss of the package: metrics, training and `return_type="loss"`.
    """
    predicting = logits[:, :-1].float()
    target = predicting.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return torch.logsumexp(predicting, -1) - target


class Embed(nn.Module):
    """Token embedding `W_E` (d_vocab, d_model)."""

    def __init__(self, d_vocab: int, d_model: int) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(d_vocab, d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, pos) ids -> (batch, pos, d_model)."""
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    """Learned position embedding `W_pos` (n_ctx, d_model)."""

    def __init__(self, n_ctx: int, d_model: int) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(n_ctx, d_model))

    def forward(self, n_pos: int) -> torch.Tensor:
        """(1, n_pos, d_model): the embeddings of positions 0..n_pos-1."""
        return self.W_pos[:n_pos][None]  # (1, pos, d_model)


class TokenTypeEmbed(nn.Module):
    """BERT's segment embedding `W_token_type` (n_token_types, d_model)."""

    def __init__(self, n_types: int, d_model: int) -> None:
        super().__init__()
        self.W_token_type = nn.Parameter(torch.empty(n_types, d_model))

    def forward(self, token_type_ids: torch.Tensor) -> torch.Tensor:
        """(batch, pos) segment ids -> (batch, pos, d_model)."""
        return self.W_token_type[token_type_ids]


class Unembed(nn.Module):
    """Unembedding `W_U` (d_model, d_vocab) unless tied to the embedding, and its bias `b_U` if any."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.tie_embeddings:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        if cfg.unembed_bias:
            self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))


class HookedTransformer(HookedModule):
    """One transformer for GPT-2, Llama, BERT, GPT-NeoX and attention-only models, set by its config."""

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.source = ""  # where the weights came from, for reports
        self.source_sha256: str | None = None  # sha256 of the file or folder they were read from, if any
        self.bos_token_id: int | None = None  # config.json's BOS, for generated prompts when there is no tokenizer
        self._digest: tuple[tuple, str] | None = None  # (parameter identities and versions, weights_digest)
        self.embed = Embed(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()  # (batch, pos, d_model)
        if cfg.positional == "learned":
            self.pos_embed = PosEmbed(cfg.n_ctx, cfg.d_model)
            self.hook_pos_embed = HookPoint()  # (batch, pos, d_model), a broadcast view as in TransformerLens
        if cfg.n_token_types:
            self.token_type_embed = TokenTypeEmbed(cfg.n_token_types, cfg.d_model)
            self.hook_token_type_embed = HookPoint()  # (batch, pos, d_model)
        if cfg.embed_norm:
            self.embed_ln = make_norm(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        if cfg.final_norm:
            self.ln_final = make_norm(cfg)
        if cfg.has_unembed:
            self.unembed = Unembed(cfg)
        self.setup_hooks()
        self.init_weights()

    # ----- construction -------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2's initialisation: normal(0, std) matrices, zero biases, unit norm weights."""
        for name, param in self.named_parameters():
            if param.is_meta:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("W_"):
                nn.init.normal_(param, std=std)
            elif leaf == "w":
                param.fill_(1.0)
            else:
                param.zero_()

    @classmethod
    def from_loaded(cls, loaded, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        """Build from a loader's `LoadedModel` without allocating random weights first."""
        with torch.device("meta"):
            model = cls(loaded.config, loaded.tokenizer)
        model.load_weights(loaded.state_dict, dtype=dtype, device=device)
        model.source = loaded.source
        model.source_sha256 = loaded.meta.get("sha256")
        model.bos_token_id = loaded.meta.get("bos_token_id")
        return model

    def weights_digest(self) -> str:
        """sha256 over every parameter's name, dtype, shape and bytes, as loaded (hex string).

        Hashed once and kept until a parameter is replaced or changed in place (torch's version counter),
        so that a resumed run can tell other weights under the same name apart cheaply.
        """
        key = tuple((name, id(p), p._version) for name, p in self.named_parameters())
        if self._digest is None or self._digest[0] != key:
            digest = hashlib.sha256()
            for name, param in self.named_parameters():
                data = param.detach().reshape(-1).contiguous().cpu()
                digest.update(f"{name} {data.dtype} {tuple(param.shape)}\n".encode())
                digest.update(memoryview(data.view(torch.uint8).numpy()))
            self._digest = (key, digest.hexdigest())
        return self._digest[1]

    def load_weights(self, state_dict: dict[str, torch.Tensor], dtype=torch.float32, device="cpu") -> None:
        """Load a complete state dict in the weight layout; a missing, extra or misshapen key, a weight that is
        not floating point, or one that holds NaN or infinite values (after conversion to `dtype`) is an error."""
        expected = {name: p.shape for name, p in self.named_parameters()}
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        wrong = [f"{n}: {tuple(state_dict[n].shape)} != {tuple(s)}" for n, s in expected.items()
                 if n in state_dict and state_dict[n].shape != s]
        for label, items in (("missing weights", missing), ("unexpected weights", unexpected),
                             ("wrong shapes", wrong)):
            if items:
                more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
                raise ModelFormatError(f"{label} for this config: {', '.join(items[:3])}{more}")
        not_float = [f"{n} ({t.dtype})" for n, t in state_dict.items() if not t.is_floating_point()]
        if not_float:
            raise ModelFormatError(f"weight {not_float[0]} is not floating point: weights must be float tensors"
                                   + (f" ({len(not_float) - 1} more are not)" if len(not_float) > 1 else ""))
        try:
            device = torch.device(device)
        except RuntimeError as err:
            raise InputError(f"unknown device {device!r}: use cpu, cuda or cuda:N", parameter="device") from err
        converted = {n: t.to(device=device, dtype=dtype) for n, t in state_dict.items()}
        bad = [n for n, t in converted.items() if not bool(torch.isfinite(t).all())]
        if bad:
            raise ModelFormatError(f"weight {bad[0]} holds NaN or infinite values" +
                                   (f" ({len(bad) - 1} more weights do)" if len(bad) > 1 else ""))
        self.load_state_dict(converted, strict=True, assign=True)

    @property
    def name(self) -> str:
        """What reports and JSON outputs call this model: where its weights came from, or, for a model built
        in memory, its architecture."""
        return self.source or f"{self.cfg.architecture} (built in memory)"

    @property
    def device(self) -> torch.device:
        """The device the weights are on."""
        return self.embed.W_E.device

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding (d_model, d_vocab); the transposed embedding when the two are tied."""
        return self.embed.W_E.T if self.cfg.tie_embeddings else self.unembed.W_U

    def set_attention_path(self, explicit: bool) -> None:
        """Force the explicit (pattern-forming) attention path everywhere, or go back to choosing."""
        for block in self.blocks:
            block.attn.force_explicit = explicit

    # ----- tokens -------------------------------------------------------------------------------
    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer: pass token ids instead of text")
        return self.tokenizer

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None) -> torch.Tensor:
        """Token ids (1, pos) of one text, or a right-padded (batch, pos) batch of several."""
        tokenizer = self._require_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        ids, _ = tokenizer.batch(texts, prepend_bos)
        return ids.to(self.device)

    def to_str_tokens(self, tokens: torch.Tensor | str, prepend_bos: bool | None = None) -> list[str]:
        """Each token's text, for ids or for a text (tokenized first)."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens, prepend_bos)[0]
        return self._require_tokenizer().str_tokens(tokens.flatten())

    def to_string(self, tokens: torch.Tensor) -> str:
        """The text of token ids."""
        return self._require_tokenizer().decode(tokens.flatten())

    def _prepare(self, tokens: TokensLike, attention_mask: torch.Tensor | None):
        """Tokenize text if given, and check ids and length before they reach an index error deep inside."""
        if isinstance(tokens, str) or (isinstance(tokens, Sequence) and not isinstance(tokens, torch.Tensor)):
            texts = [tokens] if isinstance(tokens, str) else list(tokens)
            tokens, mask = self._require_tokenizer().batch(texts)
            attention_mask = mask if attention_mask is None and len(texts) > 1 else attention_mask
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise InputError("tokens must be an integer tensor of shape (batch, pos) or text")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise InputError(f"tokens must have shape (batch, pos) with pos >= 1, got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise InputError(
                f"sequence of {tokens.shape[1]} tokens is longer than the model's context of {self.cfg.n_ctx}; "
                "truncate it or split it into windows")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.cfg.d_vocab:
            bad = low if low < 0 else high
            raise InputError(f"token id {bad} is out of range for a vocabulary of {self.cfg.d_vocab}")
        tokens = tokens.to(self.device, torch.long, non_blocking=tokens.is_pinned())  # pinned: no wait
        if attention_mask is not None:
            if attention_mask.shape != tokens.shape:
                raise InputError(f"attention_mask shape {tuple(attention_mask.shape)} != tokens shape "
                                 f"{tuple(tokens.shape)}")
            attention_mask = attention_mask.to(self.device)
        return tokens, attention_mask

    # ----- forward ------------------------------------------------------------------------------
    def embed_tokens(self, tokens: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """The residual stream entering block 0 (batch, pos, d_model): token, position and segment embeddings."""
        resid = self.embed(tokens)
        if self.cfg.embed_scale is not None:  # the factor rounded to the model's dtype, as transformers does
            resid = resid * torch.tensor(self.cfg.embed_scale, dtype=resid.dtype)
        resid = self.hook_embed(resid)
        if self.cfg.positional == "learned":
            resid = resid + self.hook_pos_embed(self.pos_embed(tokens.shape[1]).expand(tokens.shape[0], -1, -1))
        if self.cfg.n_token_types:
            types = torch.zeros_like(tokens) if token_type_ids is None else token_type_ids.to(tokens.device)
            resid = resid + self.hook_token_type_embed(self.token_type_embed(types))
        return self.embed_ln(resid) if self.cfg.embed_norm else resid

    def forward(
        self,
        tokens: TokensLike,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_type: ReturnType = "auto",
    ) -> torch.Tensor | None:
        """Run the model on token ids (batch, pos) or text.

        return_type: "logits" (batch, pos, d_vocab); "hidden", the final residual stream after ln_final
        (the last hidden state of an encoder); "auto", logits when the model has an unembedding and
        hidden otherwise; "loss", the mean next-token cross-entropy over real tokens; None, nothing
        (when only hooks matter).
        """
        tokens, attention_mask = self._prepare(tokens, attention_mask)
        resid = self.embed_tokens(tokens, token_type_ids)
        return self._finish(resid, 0, tokens, attention_mask, return_type)

    def run_from_layer(
        self,
        resid: torch.Tensor,
        start_layer: int,
        tokens: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_type: ReturnType = "auto",
    ) -> torch.Tensor | None:
        """Continue a forward pass from `blocks.{start_layer}.hook_resid_pre` (batch, pos, d_model).

        What an ablation sweep uses to skip the layers before the ablated head; `tokens` is needed only
        for return_type="loss".
        """
        if not 0 <= start_layer <= self.cfg.n_layers:
            raise InputError(f"start_layer {start_layer} is outside 0..{self.cfg.n_layers}")
        if return_type == "loss" and tokens is None:
            raise InputError("return_type='loss' needs the tokens")
        return self._finish(resid, start_layer, tokens, attention_mask, return_type)

    def _finish(self, resid, start_layer, tokens, attention_mask, return_type):
        """The blocks from `start_layer` on, the final norm and the requested output."""
        n_pos = resid.shape[1]
        biases, rotaries = {}, {}  # per window and per RoPE base: layers differ only there
        for block in self.blocks[start_layer:]:
            window = block.attn.window
            if window not in biases:
                biases[window] = attention_bias(n_pos, n_pos, self.cfg.causal, attention_mask, resid.dtype,
                                                resid.device, window)
            rotary = block.attn.rotary
            if rotary is not None and rotary.base not in rotaries:
                rotaries[rotary.base] = rotary.cos_sin(n_pos, resid.device)
            resid = block(resid, biases[window], None if rotary is None else rotaries[rotary.base])
        if self.cfg.final_norm:
            resid = self.ln_final(resid)
        if return_type is None:
            return None
        if return_type == "auto":
            return_type = "logits" if self.cfg.has_unembed else "hidden"
        if return_type == "hidden":
            return resid
        if not self.cfg.has_unembed:
            raise InputError("this model has no unembedding (an encoder): use return_type='hidden'")
        logits = self.unembed_hidden(resid)
        if return_type == "logits":
            return logits
        if return_type == "loss":
            return self.next_token_loss(logits, tokens, attention_mask)
        raise InputError(f"unknown return_type {return_type!r}: use auto, logits, hidden, loss or None")

    def unembed_hidden(self, hidden: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from final hidden states (after ln_final), (..., d_model) -> (..., d_vocab).

        With `columns` (one vocabulary index per row of a (rows, d_model) `hidden`), only that logit of each
        row: what a logit difference needs, without the rest of the vocabulary.
        """
        bias = self.unembed.b_U if self.cfg.unembed_bias else None
        if columns is None:
            logits = hidden @ self.W_U
            logits = logits if bias is None else logits + bias
        else:
            picked = (hidden * self.W_U[:, columns].T).sum(-1)
            logits = picked if bias is None else picked + bias[columns]
        cap = self.cfg.final_softcap  # Gemma 2 caps the logits: cap * tanh(logits / cap)
        return logits if cap is None else cap * torch.tanh(logits / cap)

    @staticmethod
    def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Mean cross-entropy of predicting token i+1 from position i, over real (unpadded) targets."""
        losses = token_losses(logits, tokens)
        if attention_mask is None:
            return losses.mean()
        keep = attention_mask[:, 1:].to(losses.dtype)
        return (losses * keep).sum() / keep.sum()

    # ----- hooks --------------------------------------------------------------------------------
    def run_with_hooks(
        self,
        tokens: TokensLike,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        **forward_kwargs,
    ):
        """One forward pass with temporary hooks `(name_or_filter, fn)`; they are removed afterwards."""
        with self.hooks(fwd_hooks):
            return self(tokens, **forward_kwargs)

    def run_with_cache(
        self,
        tokens: TokensLike,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        **forward_kwargs,
    ):
        """Forward pass returning `(output, cache)`; the cache holds only the activations the filter names.

        Activations are detached and, if `device` is given, moved there (e.g. "cpu" to spare GPU memory).
        """
        cache: dict[str, torch.Tensor] = {}

        def save(tensor: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = tensor.detach() if device is None else tensor.detach().to(device)

        names = self.select_hooks(names_filter)
        with self.hooks([(name, save) for name in names]):
            out = self(tokens, **forward_kwargs)
        return out, cache
