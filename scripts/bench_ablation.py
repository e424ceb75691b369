"""Benchmark: a zero-ablation sweep of every head, headscope's against TransformerLens' one head at a time.

Same weights (a `transformers` model of SmolLM2-135M's shape, seeded random weights, or the real file),
same prompts (repeated random tokens), same metric (mean next-token loss, or with --metric induction-loss
the loss on the repeated half): headscope's `sweep` (clean residuals reused, variants stacked along the
batch, only the read positions unembedded) against the bridge's `run_with_hooks` with a hook zeroing one
head's `hook_z`, head after head. Prints both times, the ratio and the largest difference of
the per-head losses (target 1e-4).

  python scripts/bench_ablation.py --device cpu --batch 1 --seq 32             # a small sweep, all 270 heads
  python scripts/bench_ablation.py --device cpu --batch 2 --seq 128 --layers 10
  python scripts/bench_ablation.py --device cuda --batch 8 --seq 256          # the issue's GPU setting
"""

from __future__ import annotations

import argparse
import time

import torch

from headscope.analysis.ablation import sweep
from headscope.analysis.metrics import METRICS, induction_loss_metric
from headscope.capture.datasets import repeated_random_tokens
from headscope.loading.load import load_model
from headscope.loading.transformer_lens import boot_bridge

from bench_report import report  # scripts/, beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="random", help="random (SmolLM2-135M's shape) or smollm2-135m")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N layers (a smaller sweep)")
    parser.add_argument("--metric", default="loss", choices=["loss", "induction-loss"],
                        help="mean next-token loss, or the loss on the repeated half only")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    from bench_capture import build_hf_model, word_tokenizer  # the same model builder as the capture benchmark

    args.dtype = "float32"
    hf = build_hf_model(args)
    if args.layers:
        hf.model.layers = hf.model.layers[: args.layers]
        hf.config.num_hidden_layers = args.layers
    ours = load_model(hf, device=args.device)
    n_layers, n_heads = ours.cfg.n_layers, ours.cfg.n_heads
    data = repeated_random_tokens(args.batch, (args.seq - 1) // 2, vocab_size=ours.cfg.d_vocab, seed=0,
                                  bos_token_id=1, low=100)
    tokens = data.tokens.to(args.device)
    real = torch.ones_like(tokens, dtype=torch.bool)

    metric = induction_loss_metric(data) if args.metric == "induction-loss" else METRICS["loss"]
    sweep(ours, data.subset([0]), "zero", metric, n_bootstrap=10)  # warm-up
    start = time.perf_counter()
    result = sweep(ours, data, "zero", metric, n_bootstrap=10)
    if args.device == "cuda":
        torch.cuda.synchronize()
    ours_s = time.perf_counter() - start

    bridge = boot_bridge(hf, word_tokenizer(ours.cfg.d_vocab), name="smollm2-shape")
    theirs = torch.zeros(n_layers, n_heads)
    start = time.perf_counter()
    for layer in range(n_layers):
        for head in range(n_heads):
            def zero_head(z, hook, head=head):
                z[:, :, head] = 0
                return z
            logits = bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)])
            theirs[layer, head] = metric(logits, tokens, real, logits).mean()  # the same formula, from full logits
    if args.device == "cuda":
        torch.cuda.synchronize()
    theirs_s = time.perf_counter() - start
    ours_values = torch.tensor([e.value for e in result.effects]).view(n_layers, n_heads)
    figures = {"command": "python scripts/bench_ablation.py " + " ".join(
                   f"--{k} {v}" for k, v in vars(args).items() if v is not None and k not in ("json", "dtype")),
               "device": args.device, "heads": n_layers * n_heads, "prompts": args.batch, "tokens": tokens.shape[1],
               "headscope_s": ours_s, "transformer_lens_s": theirs_s, "speedup": theirs_s / ours_s,
               "max_abs_difference": float((ours_values - theirs).abs().max()), "torch": torch.__version__}
    report(figures, args.json)


if __name__ == "__main__":
    main()
