"""Peak memory of `classify_heads` on the shipped toy model with a large census of prompts.

Every role's bootstrap interval draws its resamples in bounded chunks (`headscope.analysis.intervals`), so
the peak grows with the prompts' own statistics, not with 1000 resamples x prompts. `--chunk-bytes` set
very large draws all resamples at once, as before the chunking: the side-by-side figure.

    # the whole of classify (two captures, bootstrap, nulls, copying scores):
    PYTHONPATH=. python scripts/bench_classify_memory.py full --prompts 100000 --max-memory 512
    # classify's interval stage alone, on a capture result of that many prompts (seconds, not hours):
    PYTHONPATH=. python scripts/bench_classify_memory.py bootstrap --prompts 100000 [--chunk-bytes 1e12]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_report import report  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bootstrap_stage(model, n_prompts: int) -> dict:
    """Every causal role's interval, as classify computes them, from per-prompt sums of the model's shape."""
    import torch

    from headscope.analysis.role_registry import registered_roles
    from headscope.analysis.roles import bootstrap_interval
    from headscope.capture.result import CaptureResult

    generator = torch.Generator().manual_seed(0)
    shape = (n_prompts, model.cfg.n_layers, model.cfg.n_heads)
    stats = sorted({r.capture_statistic.name for r in registered_roles(causal=True) if r.score is None})
    counts = {s: torch.randint(1, 40, (n_prompts,), generator=generator) for s in stats}
    sums = {s: torch.rand(shape, generator=generator, dtype=torch.float64) * counts[s][:, None, None] for s in stats}
    result = CaptureResult(sums, counts, {})
    widths = [float((hi - lo).mean()) for lo, hi in (bootstrap_interval(result, s) for s in stats)]
    return {"statistics": len(stats), "mean_interval_width": sum(widths) / len(widths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["full", "bootstrap"])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--max-memory", type=int, default=512, help="MB for a forward pass's activations (full)")
    parser.add_argument("--chunk-bytes", type=float, help="bytes per chunk of resamples (default: the library's)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import headscope
    from headscope.analysis import intervals
    from headscope.analysis.roles import classify_heads

    if args.chunk_bytes is not None:
        intervals.CHUNK_BYTES = int(args.chunk_bytes)
    model = headscope.load_model("toy-induction-2l")
    before = peak_rss_mb()
    began = time.perf_counter()
    if args.stage == "full":
        table = classify_heads(model, num_prompts=args.prompts, seq_len=model.cfg.n_ctx - 2,
                               max_memory=args.max_memory << 20)
        figures = {"heads_with_roles": len(table.heads_with_roles()), "max_memory_mb": args.max_memory}
    else:
        figures = bootstrap_stage(model, args.prompts)
    report({"stage": args.stage, "prompts": args.prompts, "chunk_bytes": intervals.CHUNK_BYTES, **figures,
            "seconds": round(time.perf_counter() - began, 1), "peak_rss_mb_after_load": round(before),
            "peak_rss_mb": round(peak_rss_mb())}, args.json)


if __name__ == "__main__":
    main()
