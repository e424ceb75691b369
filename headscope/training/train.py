"""Train attention-only transformers on repeated random tokens, with checkpoints and role evaluation.

Data: each sequence is BOS then a random segment of a random length (between `min_period` and
`max_period`, drawn per sequence) repeated until the sequence is full. The period varies so that the only
way to predict a repeat is by content (an induction head), not by a fixed offset: with one fixed period a
layer-0 head learns to look exactly one period back, which `classify_heads` rightly refuses to call an
induction head. Batches are drawn from a generator seeded by (seed, step), so a run is deterministic on a
CPU and a resumed run needs no generator state to continue exactly.

Checkpoints: `out_dir/step-NNNNNN/` is a headscope checkpoint plus `trainer_state.pt` (optimizer state,
step, log), written to a temporary folder and renamed, so an interrupted run always leaves its last
complete checkpoint readable; `train(..., resume=True)` continues from it.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from headscope.capture.datasets import repeated_random_tokens
from headscope.capture.engine import capture
from headscope.errors import InputError
from headscope.io import strict_json, write_text_atomically
from headscope.loading.checkpoint import load_checkpoint, save_checkpoint
from headscope.model.config import ModelConfig
from headscope.model.transformer import HookedTransformer, token_losses
from headscope.training.tokenizers import byte_tokenizer, toy_tokenizer

MARKER = "training.json"
LOSS_EVERY = 20  # steps between reads of the loss for the progress bar (each read waits for a GPU)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a toy-model training run; two runs with equal configs train the same model."""

    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: int | None = None  # None: d_model // n_heads
    d_mlp: int = 0  # 0: attention-only
    layernorm: bool = True
    data: str = "repeated-random"  # or "stdlib": byte-level text of the Python standard library's source
    corpus_dir: str | None = None  # for "stdlib": another folder of .py/.txt files instead of the stdlib's
    vocab: int | None = None  # token ids 0..vocab-1; None: 64, or the 256 bytes for "stdlib"; BOS is id `vocab`
    seq_len: int = 40  # tokens after BOS
    min_period: int = 6
    max_period: int = 16
    batch_size: int = 32
    steps: int = 800
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 50
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        if self.vocab is None:  # frozen: fill the derived defaults in place, once
            object.__setattr__(self, "vocab", 256 if self.data == "stdlib" else 64)
        if self.d_head is None:
            if not isinstance(self.n_heads, int) or self.n_heads <= 0 or self.d_model % self.n_heads:
                raise InputError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        checks = {"steps": self.steps, "batch_size": self.batch_size, "n_layers": self.n_layers,
                  "eval_every": self.eval_every, "checkpoint_every": self.checkpoint_every, "min_period": self.min_period}
        bad = {k: v for k, v in checks.items() if not isinstance(v, int) or v <= 0}
        if bad:
            name, value = next(iter(bad.items()))
            raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.data not in ("repeated-random", "stdlib"):
            raise InputError(f"unknown training data {self.data!r}: use repeated-random or stdlib")
        if self.data == "stdlib" and self.vocab != 256:
            raise InputError(f"stdlib data is byte-level: vocab must be 256, got {self.vocab}")
        if not self.min_period <= self.max_period <= self.vocab:
            raise InputError(f"need min_period <= max_period <= vocab, got {self.min_period}, {self.max_period}, "
                             f"{self.vocab}")
        if self.seq_len < 2 * self.max_period:
            raise InputError(f"seq_len {self.seq_len} must hold two periods of up to {self.max_period} tokens")

    def model_config(self) -> ModelConfig:
        """The attention-only `ModelConfig` this training run builds."""
        return ModelConfig(
            architecture="attn-only" if not self.d_mlp else "toy", d_model=self.d_model, n_layers=self.n_layers,
            n_heads=self.n_heads, d_head=self.d_head, d_vocab=self.vocab + 1, n_ctx=self.seq_len + 1,
            d_mlp=self.d_mlp, act_fn="gelu", norm="layernorm" if self.layernorm else "none",
            final_norm=self.layernorm)


@dataclass
class TrainResult:
    """The trained model and the log of every evaluation."""

    model: HookedTransformer
    log: list[dict] = field(default_factory=list)  # per evaluation: step, loss, icl_score, induction, previous_token


@functools.lru_cache(maxsize=4)
def corpus_bytes(folder: str | None, limit: int = 8 << 20) -> torch.Tensor:
    """The .py and .txt files under `folder` (default: the running Python's standard library), joined,
    at most `limit` bytes, as a uint8 tensor; a folder with no text is an InputError."""
    root = Path(folder) if folder is not None else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise InputError(f"corpus folder {root} does not exist")
    chunks, size = [], 0
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".txt") and p.is_file()):
        data = path.read_bytes()
        if data.strip():
            chunks.append(data + b"\n\n")
            size += len(chunks[-1])
        if size >= limit:
            break
    if not chunks:
        raise InputError(f"corpus folder {root} has no .py or .txt text to train on")
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


def training_batch(cfg: TrainConfig, step: int, batch_size: int | None = None) -> torch.Tensor:
    """The batch of one step: BOS + a random-length random segment repeated to fill seq_len, or BOS +
    a window of the corpus at a random offset."""
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    if cfg.data == "stdlib":
        text = corpus_bytes(cfg.corpus_dir)
        starts = torch.randint(0, len(text) - cfg.seq_len, (batch_size or cfg.batch_size,), generator=generator)
        windows = text[starts[:, None] + torch.arange(cfg.seq_len)]
        return torch.cat([torch.full((len(windows), 1), cfg.vocab), windows], dim=1)
    n = batch_size or cfg.batch_size
    periods, segments = torch.empty(n, dtype=torch.long), torch.empty(n, cfg.vocab, dtype=torch.long)
    for row in range(n):  # the draws one row after another, in this order, so that a seed's data never changes
        periods[row] = int(torch.randint(cfg.min_period, cfg.max_period + 1, (1,), generator=generator))
        segments[row] = torch.randperm(cfg.vocab, generator=generator)
    repeated = segments.gather(1, torch.arange(cfg.seq_len) % periods[:, None])  # token j: segment[j % period]
    return torch.cat([torch.full((n, 1), cfg.vocab), repeated], dim=1)


def in_context_learning_score(model: HookedTransformer, cfg: TrainConfig) -> float:
    """Olsson et al.'s in-context learning score on held-out sequences: loss at a late token minus loss at
    an early one (the last token vs the 3rd after BOS); negative when context helps."""
    tokens = training_batch(cfg, step=-1, batch_size=64).to(model.device)  # a step no training batch uses
    with torch.no_grad():
        logits = model(tokens)
    losses = token_losses(logits, tokens).mean(0)
    return float(losses[-1] - losses[2])


def _evaluate(model: HookedTransformer, cfg: TrainConfig, step: int, loss: float) -> dict:
    probe = repeated_random_tokens(16, cfg.max_period, vocab_size=cfg.vocab, seed=12345, bos_token_id=cfg.vocab)
    model.eval()
    result = capture(model, probe, ["induction", "previous_token"], progress=False)
    icl = in_context_learning_score(model, cfg)
    model.train()
    return {"step": step, "loss": loss, "icl_score": icl, "induction": result.mean("induction").tolist(),
            "previous_token": result.mean("previous_token").tolist()}


def _learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step <= cfg.warmup:
        return cfg.lr * step / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _prepare_out_dir(out_dir: Path, cfg: TrainConfig, resume: bool) -> tuple[int, dict | None]:
    """The step to start from and the trainer state to restore; refuses folders that are not ours."""
    marker = out_dir / MARKER
    if out_dir.exists() and any(out_dir.iterdir()) and not marker.exists():
        raise InputError(f"{out_dir} exists and is not a headscope training folder: choose an empty or new folder")
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved != asdict(cfg):
            raise InputError(f"{out_dir} holds a run with another configuration: use a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(asdict(cfg), indent=2))
    done = sorted(p for p in out_dir.glob("step-*") if (p / "trainer_state.pt").exists())
    if not resume or not done:
        return 0, None
    return int(done[-1].name.split("-")[1]), {"folder": done[-1], **torch.load(done[-1] / "trainer_state.pt", map_location="cpu")}


def _save(out_dir: Path, model, optimizer, step: int, log: list[dict]) -> None:
    final = out_dir / f"step-{step:06d}"
    tmp = out_dir / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "log": log}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def train(cfg: TrainConfig, out_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
          device: str | torch.device = "cpu") -> TrainResult:
    """Train a model as `cfg` says; with `out_dir`, checkpoint every `checkpoint_every` steps and resume.

    Batches are drawn on the CPU (so a seed means the same data everywhere) and moved to `device`."""
    torch.manual_seed(cfg.seed)
    tokenizer = byte_tokenizer() if cfg.data == "stdlib" else toy_tokenizer(cfg.vocab)
    model = HookedTransformer(cfg.model_config(), tokenizer).train()
    start, state, log = 0, None, []
    if out_dir is not None:
        start, state = _prepare_out_dir(Path(out_dir), cfg, resume)
    if state is not None:
        model.load_weights(load_checkpoint(state["folder"]).state_dict)
        model.train()
        log = state["log"]
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    bar = tqdm(range(start + 1, cfg.steps + 1), initial=start, total=cfg.steps, disable=not progress, desc="train")
    began = time.perf_counter()
    pin = torch.device(device).type == "cuda"
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(cfg, step)
        # The batch stays on the CPU: the model checks its ids there and copies it (pinned: without waiting).
        tokens = training_batch(cfg, step)
        loss = model(tokens.pin_memory() if pin else tokens, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        evaluate = step % cfg.eval_every == 0 or step == cfg.steps
        if evaluate or step % LOSS_EVERY == 0:  # reading the loss waits for the device
            rate = (step - start) * tokens.numel() / (time.perf_counter() - began)
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{rate:,.0f}")
        if evaluate:
            log.append(_evaluate(model, cfg, step, loss.item()))
        if out_dir is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _save(Path(out_dir), model, optimizer, step, log)
    bar.close()
    if out_dir is not None:
        write_text_atomically(Path(out_dir) / "log.json", strict_json(log, indent=1))
    return TrainResult(model.eval(), log)
